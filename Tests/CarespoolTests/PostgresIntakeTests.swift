import Foundation
import GRDB
import Kinds
import PostgresStore
import Store
import Testing

/// Intake in PostgreSQL: the verdicts and tables SQLite's writer gives, by batch and by chunk, and every
/// key once when two hosts write overlapping files at the same moment.
@Suite(.serialized) struct PostgresIntakeTests {
    static func file(_ id: String, _ csv: String) throws -> PreparedFile {
        var file = PreparedFile(
            id: id,
            kind: .intake,
            originalName: id + ".csv",
            sha256: PostgresLedgerTests.sha(csv),
            size: csv.utf8.count,
            receivedAt: "2026-12-06T00:00:00.000Z",
            content: .intake(try projectCatalog().intake.readCSV(Array(csv.utf8), today: "2026-12-06"))
        )
        file.sender = "partner-b"
        return file
    }

    static func items(_ csv: String) throws -> [Item<IntakeRecord>] {
        try projectCatalog().intake.readCSV(Array(csv.utf8), today: "2026-12-06").items
    }

    /// The four intake tables as rows of text, the same query in both databases (`||` and coalesce are
    /// SQLite's and PostgreSQL's alike).
    static let tables = [
        "SELECT mrn || '|' || file_id FROM patients ORDER BY mrn",
        """
        SELECT p.mrn || '|' || s.first_name || '|' || s.last_name || '|' || s.birth_date || '|' || s.file_id
        FROM persons s JOIN patients p ON p.id = s.patient_id ORDER BY p.mrn
        """,
        """
        SELECT p.mrn || '|' || h.field || '|' || h.old_value || '|' || h.new_value || '|' || h.file_id || '|' || h.record
        FROM person_history h JOIN patients p ON p.id = h.patient_id ORDER BY p.mrn, h.file_id, h.record, h.field
        """,
        """
        SELECT v.visit_account_number || '|' || p.mrn || '|' || v.visit_date || '|' || coalesce(v.reason, 'NULL')
               || '|' || v.file_id || '|' || v.record
        FROM visits v JOIN patients p ON p.id = v.patient_id ORDER BY v.visit_account_number
        """,
    ]

    @Test func batchesAndChunksGetTheVerdictsAndTablesSQLiteGives() async throws {
        // MRNs and visit numbers in no order, accents, names that change within a file and across files,
        // repeats the same and changed, a bad row, a new MRN whose visit is taken, a byte-identical copy.
        let f1 = """
            \(intakeHeader)
            M-7,Zoë,Ålander,1980-02-29,V-30,2025-01-02,Grippe saisonnière
            M-1,José,Núñez,1975-07-04,V-10,2025-01-03,
            M-7,Zoé,Ålander,1980-02-29,V-31,2025-01-04,contrôle
            M-1,José,Núñez,1975-07-04,V-10,2025-01-03,
            M-2,Ana,Lee,1990-13-01,V-20,2025-01-05,x
            M-1,José,Núñez,1975-07-04,V-10,2025-01-09,changed
            M-3,Ünal,Öz,2001-01-01,V-40,2025-01-06,suivi
            """
        let f2 = """
            \(intakeHeader)
            M-9,New,Person,1999-09-09,V-30,2025-01-02,Grippe saisonnière
            M-1,José,Núñez,1975-07-05,V-11,2025-02-01,rappel
            M-7,Zoé,Ålander-Berg,1980-02-29,V-32,2025-02-02,
            M-3,Ünal,Öz,2001-01-01,V-40,2025-01-06,suivi
            M-3,Ünal,Öz,2001-01-01,V-40,2025-01-06,other reason
            """
        let f3 = f1  // the same bytes: a duplicate of f1
        let big =
            [intakeHeader]
            + (0..<14).map { n in
                let mrn = "M-\([4, 1, 8, 7, 4, 3, 8, 1, 5, 9, 4, 6, 2, 8][n])"
                let first = n % 3 == 0 ? "Élodie" : "Elodie"
                return
                    "\(mrn),\(first),Durand,1988-0\(1 + n % 9)-1\(n % 10),VB-\((n * 7) % 11),2025-03-0\(1 + n % 9),r\(n % 4)"
            }
        let chunked = big.joined(separator: "\n")
        let chunkItems = try Self.items(chunked)
        let chunks = stride(from: 0, to: chunkItems.count, by: 4).map {
            Array(chunkItems[$0..<min($0 + 4, chunkItems.count)])
        }

        let dir = TempDir("pg-intake-verdicts")
        defer { dir.cleanup() }
        let lite = try AppDatabase.open(path: dir.file("v.sqlite3"))
        var liteReports: [String] = []
        liteReports += try lite.commit(
            [Self.file("f1", f1), Self.file("f2", f2)],
            finishedAt: "2026-12-06T00:00:01.000Z"
        )
        .map { $0.report.json() }
        liteReports += try lite.commit([Self.file("f3", f3)], finishedAt: "2026-12-06T00:00:02.000Z").map {
            $0.report.json()
        }
        for chunk in chunks { liteReports.append(try lite.commitChunk(.intake(chunk), fileID: "f4").json()) }
        // A chunk committed again (a replay after a crash): its rows are the file's own, stored, not again.
        liteReports.append(try lite.commitChunk(.intake(chunks[1]), fileID: "f4").json())
        var streamed = try Self.file("f4", chunked)
        streamed.content = .streamed(FileReport(outcome: .partial, stored: 9, duplicates: 0, rejected: 5))
        liteReports += try lite.commit([streamed], finishedAt: "2026-12-06T00:00:03.000Z").map { $0.report.json() }
        let liteTables = try await lite.writer.read { db in
            try Self.tables.map { try String.fetchAll(db, sql: $0) }
        }

        try await PostgresLedgerTests.withHosts { server, one, _ in
            var reports: [String] = []
            reports += try await one.commit(
                [Self.file("f1", f1), Self.file("f2", f2)],
                finishedAt: "2026-12-06T00:00:01.000Z"
            ).map { $0.report.json() }
            reports += try await one.commit([Self.file("f3", f3)], finishedAt: "2026-12-06T00:00:02.000Z").map {
                $0.report.json()
            }
            for chunk in chunks { reports.append(try await one.writeChunk(.intake(chunk), fileID: "f4").json()) }
            // Between the chunks and the verdict the file's row is no ledger row (a replay writes it again).
            #expect(try await one.ledgerReport(id: "f4") == nil)
            #expect(
                try await server.psql("SELECT outcome || '|' || host FROM files WHERE id = 'f4'", database: "site")
                    == "processing|h1"
            )
            reports.append(try await one.writeChunk(.intake(chunks[1]), fileID: "f4").json())
            reports += try await one.commit([streamed], finishedAt: "2026-12-06T00:00:03.000Z").map {
                $0.report.json()
            }
            #expect(reports == liteReports)
            #expect(reports[0].contains("\"partial\""), "\(reports[0])")
            #expect(reports[1].contains("conflicts with the visit stored from file f1"), "\(reports[1])")
            #expect(reports[2].contains("\"duplicate\""), "f3 is f1's bytes: \(reports[2])")
            for (table, query) in Self.tables.enumerated() {
                let rows = try await server.psql(query, database: "site").split(separator: "\n").map(String.init)
                #expect(rows == liteTables[table], "\(query)")
            }
            // f2's M-9 found its visit taken: no patient was left of it (f4 made M-9 later).
            let m9 = try await server.psql("SELECT file_id FROM patients WHERE mrn = 'M-9'", database: "site")
            #expect(m9 == "f4")
            let f4 = try await server.psql(
                "SELECT outcome || '|' || stored || '|' || host FROM files WHERE id = 'f4'",
                database: "site"
            )
            #expect(f4 == "partial|9|h1")
        }
    }

    @Test func keysThatUnicodeCallsEquivalentStayApartAsTheDatabasesKeepThem() async throws {
        // "é" precomposed and decomposed, "K" and the Kelvin sign: Swift's `==` calls them equal, SQLite and
        // PostgreSQL do not. Two patients, two visits, a change of name, a conflicting note — in both.
        let nfc = "M\u{E9}"
        let nfd = "Me\u{301}"
        let files = [
            ("u1", "\(intakeHeader)\n\(nfc),Alice,Smith,1980-01-01,V1,2025-01-01,\n"),
            ("u2", "\(intakeHeader)\n\(nfd),Bob,Jones,1990-02-02,V2,2025-01-01,\n"),
            (
                "u3",
                "\(intakeHeader)\n\(nfc),Alice,Smith,1980-01-01,V3,2025-01-01,\n\(nfd),Bob,Jones,1990-02-02,V4,2025-01-01,\n"
                    + "K200,Dan,Lee,1970-01-01,A1,2025-01-01,\n\u{212A}200,Eve,Ng,1971-01-01,A2,2025-01-01,\n"
                    + "Z1,Jos\u{E9},Ruiz,1960-01-01,VK9,2025-01-01,\nZ1,Jose\u{301},Ruiz,1960-01-01,V\u{212A}9,2025-01-01,\n"
            ),
        ]
        let events = [
            ("e1", event("AP-\u{E9}", "2026-05-01T10:00:00Z", notes: "caf\u{E9}")),
            ("e2", event("AP-e\u{301}", "2026-05-01T10:00:00Z", notes: "caf\u{E9}")),
            ("e3", event("AP-\u{E9}", "2026-05-01T10:00:00Z", notes: "cafe\u{301}")),
        ]
        let dir = TempDir("pg-exact")
        defer { dir.cleanup() }
        let lite = try AppDatabase.open(path: dir.file("x.sqlite3"))
        var liteReports: [String] = []
        for (id, csv) in files {
            liteReports += try lite.commit([Self.file(id, csv)], finishedAt: "2026-12-06T00:00:01.000Z").map {
                $0.report.json()
            }
        }
        liteReports += try lite.commit(
            try events.map { try PostgresLedgerTests.file($0.0, $0.1) },
            finishedAt: "2026-12-06T00:00:02.000Z"
        ).map { $0.report.json() }
        let appointments = "SELECT appointment_id || '|' || notes FROM appointments ORDER BY appointment_id"
        let liteTables = try await lite.writer.read { db in
            try (Self.tables + [appointments]).map { try String.fetchAll(db, sql: $0) }
        }
        try await PostgresLedgerTests.withHosts { server, one, _ in
            var reports: [String] = []
            for (id, csv) in files {
                reports += try await one.commit([Self.file(id, csv)], finishedAt: "2026-12-06T00:00:01.000Z").map {
                    $0.report.json()
                }
            }
            reports += try await one.commit(
                try events.map { try PostgresLedgerTests.file($0.0, $0.1) },
                finishedAt: "2026-12-06T00:00:02.000Z"
            ).map { $0.report.json() }
            #expect(reports == liteReports)
            for (table, query) in (Self.tables + [appointments]).enumerated() {
                let rows = try await server.psql(query, database: "site").split(separator: "\n").map(String.init)
                #expect(rows == liteTables[table], "\(query)")
            }
            let persons = try await server.psql(Self.tables[1], database: "site").split(separator: "\n")
            #expect(persons.count == 5, "\(persons)")  // Mé, Mé (NFD), K200, K200 (Kelvin), Z1
            #expect(
                persons.contains { $0.hasPrefix("\(nfc)|Alice|Smith") }
                    && persons.contains { $0.hasPrefix("\(nfd)|Bob") }
            )
            let history = try await server.psql(Self.tables[2], database: "site")
            #expect(
                history.split(separator: "\n").count == 1 && history.contains("first_name|Jos\u{E9}|Jose\u{301}"),
                "\(history)"
            )
            #expect(try await server.psql("SELECT count(*) FROM visits", database: "site") == "8")
            #expect(reports[4].contains("\"accepted\""), "AP-e\u{301} is another appointment: \(reports[4])")
            #expect(reports[5].contains("conflicts with the event stored from file e1"), "\(reports[5])")
            #expect(try await server.psql("SELECT count(*) FROM appointments", database: "site") == "2")
        }
    }

    /// The rows that may store a visit reach PostgreSQL by COPY's text format: every byte a reason can hold
    /// — a backslash, `\N`, `\.`, a tab, a line break or carriage return inside quotes, an empty reason, none
    /// — is stored as SQLite stores it (an empty one as none) (compared as hex, since they span lines).
    @Test func textThatCopyEscapesIsStoredByteForByte() async throws {
        let reasons = [
            "C:\\temp\\x", "\\N", "\\.", "tab\there", "\"line\nbreak\"", "\"carriage\r\nreturn\"", "",
            "\"quoted \"\"word\"\", and a comma\"", "trailing backslash \\", "\"\"",
        ]
        let rows = reasons.enumerated().map { n, reason in "M-\(n),Zoë,Ñ\\\(n),1980-01-01,V-\(n),2025-01-01,\(reason)" }
        let csv = ([intakeHeader] + rows).joined(separator: "\n") + "\n"
        let query = """
            SELECT v.visit_account_number || '|' || CASE WHEN v.reason IS NULL THEN 'NULL' ELSE 'x' || hex(v.reason) END
                   || '|' || hex(s.last_name)
            FROM visits v JOIN persons s ON s.patient_id = v.patient_id ORDER BY v.visit_account_number
            """
        let dir = TempDir("pg-intake-copy")
        defer { dir.cleanup() }
        let lite = try AppDatabase.open(path: dir.file("c.sqlite3"))
        let liteReport = try lite.commit([Self.file("c1", csv)], finishedAt: "2026-12-06T00:00:01.000Z")[0].report
        let liteRows = try await lite.writer.read { db in try String.fetchAll(db, sql: query) }
        #expect(liteReport.stored == reasons.count, "\(liteReport.json())")
        try await PostgresLedgerTests.withHosts { server, one, _ in
            let report = try await one.commit([Self.file("c1", csv)], finishedAt: "2026-12-06T00:00:01.000Z")[0].report
            #expect(report.json() == liteReport.json())
            func hex(_ column: String) -> String { "upper(encode(convert_to(\(column), 'UTF8'), 'hex'))" }
            let site =
                query
                .replacingOccurrences(of: "hex(v.reason)", with: hex("v.reason"))
                .replacingOccurrences(of: "hex(s.last_name)", with: hex("s.last_name"))
            let rows = try await server.psql(site, database: "site").split(separator: "\n").map(String.init)
            #expect(rows == liteRows)
            #expect(rows.count == reasons.count)
        }
    }

    /// Another role's table of the staging table's name, in a schema the search path lists before
    /// `pg_temp` (as PostgreSQL advises), with a trigger that keeps what it is given: it gets nothing, and the
    /// rows are stored (found by the hostile review: the COPY named the table without its schema).
    @Test func aTableOfAnotherRoleFirstInTheSearchPathIsGivenNoRows() async throws {
        try await PostgresLedgerTests.withHosts { server, _, two in
            try await server.psql("CREATE ROLE mallory")
            try await server.psql(
                """
                CREATE TABLE public.loot (van TEXT, mrn TEXT, reason TEXT);
                CREATE TABLE public.carespool_intake_stage
                    (ord BIGINT, van TEXT, mrn TEXT, visit_date TEXT, reason TEXT, record BIGINT);
                CREATE FUNCTION public.keep() RETURNS trigger LANGUAGE plpgsql AS $$
                    BEGIN INSERT INTO public.loot VALUES (NEW.van, NEW.mrn, NEW.reason); RETURN NEW; END $$;
                CREATE TRIGGER keep BEFORE INSERT ON public.carespool_intake_stage
                    FOR EACH ROW EXECUTE FUNCTION public.keep();
                ALTER TABLE public.carespool_intake_stage OWNER TO mallory;
                ALTER TABLE public.loot OWNER TO mallory;
                GRANT ALL ON public.carespool_intake_stage, public.loot TO PUBLIC;
                ALTER DATABASE site SET search_path = "$user", public, pg_temp
                """,
                database: "site"
            )
            let csv =
                "\(intakeHeader)\nM-1,Zoë,Ålander,1980-02-29,V-1,2025-01-02,suivi\nM-2,Ana,Lee,1990-01-01,V-2,2025-01-03,\n"
            let report = try await two.commit([Self.file("s1", csv)], finishedAt: "2026-12-06T00:00:01.000Z")[0].report
            #expect(report.stored == 2, "\(report.json())")
            #expect(try await server.psql("SHOW search_path", database: "site").contains("public, pg_temp"))
            #expect(try await server.psql("SELECT count(*) FROM visits", database: "site") == "2")
            #expect(try await server.psql("SELECT count(*) FROM public.loot", database: "site") == "0")
        }
    }

    @Test func overlappingIntakeFromTwoHostsStoresEveryKeyOnce() async throws {
        try await PostgresLedgerTests.withHosts { server, one, two in
            var stored = 0
            var duplicates = 0
            for round in 0..<8 {
                let rows = (0..<300).map { n in
                    "MR\(round)-\(n % 40),Noé,Müller,1970-01-\(10 + n % 9),VR\(round)-\(n),2025-04-01,suivi"
                }
                // The same keys in opposite orders, in files that differ: no byte lock serialises them.
                let forward = try Self.file("i\(round)-h1", ([intakeHeader] + rows).joined(separator: "\n"))
                let backward = try Self.file(
                    "i\(round)-h2",
                    ([intakeHeader] + rows.reversed()).joined(separator: "\n")
                )
                let counts = try await PostgresLedgerTests.commitAtOnce(one, [forward], two, [backward])
                stored += counts.stored
                duplicates += counts.duplicates
            }
            #expect(stored == 2_400 && duplicates == 2_400)
            #expect(try await server.psql("SELECT count(*) FROM visits", database: "site") == "2400")
            #expect(try await server.psql("SELECT count(*) FROM patients", database: "site") == "320")
            #expect(try await server.psql("SELECT count(*) FROM persons", database: "site") == "320")
            // Each person's history is a chain: every change starts from the value the one before it left.
            let broken = try await server.psql(
                """
                SELECT count(*) FROM (
                    SELECT old_value, lag(new_value) OVER (PARTITION BY patient_id, field ORDER BY seq) AS before
                    FROM person_history) h
                WHERE h.before IS NOT NULL AND h.before <> h.old_value
                """,
                database: "site"
            )
            #expect(broken == "0")
            let last = try await server.psql(
                """
                SELECT count(*) FROM persons s
                WHERE s.birth_date <> coalesce((SELECT h.new_value FROM person_history h
                                                WHERE h.patient_id = s.patient_id AND h.field = 'birth_date'
                                                ORDER BY h.seq DESC LIMIT 1), s.birth_date)
                """,
                database: "site"
            )
            #expect(last == "0")
        }
    }
}
