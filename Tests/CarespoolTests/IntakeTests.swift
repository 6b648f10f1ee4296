import Foundation
import GRDB
import Kinds
import Pipeline
import Subprocess
import Testing

#if canImport(Glibc)
    import Glibc
#endif

let intakeHeader = "mrn,first_name,last_name,birth_date,visit_account_number,visit_date,reason"

/// `count` intake rows; MRNs repeat (`repeatEvery`), visits are unique.
func intakeCSV(count: Int, header: String = intakeHeader, start: Int = 0) -> String {
    var out = header + "\n"
    out.reserveCapacity(count * 80)
    for n in start..<(start + count) {
        let mrn = n % 10 < 3 && n >= 10 ? "MRN\(n - 7)" : "MRN\(n)"  // 30% of rows repeat an earlier MRN
        out +=
            "\(mrn),First\(n % 97),Last\(n % 89),1980-01-\(String(format: "%02d", 1 + n % 28)),VAN\(n),2025-03-01,follow-up\n"
    }
    return out
}

/// Intake through the real daemon.
@Suite(.serialized) struct IntakeDaemonTests {
    func ingest(_ files: [(name: String, text: String)], arguments: [String] = []) async throws -> (SpoolView, String) {
        let dir = TempDir("intake")
        let spool = dir.path + "/spool"
        let view = SpoolView(root: spool)
        let run = try await Daemon.serve(spool: spool, arguments: arguments) { pid in
            try await waitUntilServing(spool)
            var finished = true
            for (index, file) in files.enumerated() {
                try dropLikeRsync(file.text, into: spool + "/inbox/intake", name: file.name)
                let done = await eventually(timeout: .seconds(120)) {
                    view.done("intake").count + view.failed("intake").count == index + 1
                }
                finished = finished && done
            }
            kill(pid, SIGTERM)
            return finished
        }
        #expect(run.result)
        return (view, run.log)
    }

    @Test func goodRowsAreStoredBadRowsRejectedWithTheirLineAndTheFileIsPartial() async throws {
        let rows = [
            "\u{FEFF} MRN ,Last_Name,first_name,birth_date,visit_account_number,visit_date,reason,clinic",
            "M1,Lee,Ann,1980-02-01,V1,2025-01-01,\"check, up\",north",
            "M1,Li,Ann,1980-02-01,V2,2025-02-01,,north",
            "M2,Kay,Bo,2031-01-01,V3,2025-01-01,,south",
            "M3,,Cy,1990-02-30,V4,2025-01-01,,south",
            "\"M4\",Dee,\"Di\nna\",1970-05-05,V5,2025-01-01,\"said \"\"hi\"\"\",east",
            "",
        ]
        let text = rows.joined(separator: "\r\n") + "\n"
        let (view, log) = try await ingest([("clinic.csv", text)])
        let spool = view.root
        #expect(view.done("intake").count == 1)
        let rejectedName = try #require(view.sidecars("intake").first { $0.hasSuffix(".rejected.csv") })
        let rejected = try String(contentsOfFile: spool + "/failed/intake/" + rejectedName, encoding: .utf8)
        let lines = rejected.split(separator: "\n", omittingEmptySubsequences: false)
        #expect(
            lines[0] == " MRN ,Last_Name,first_name,birth_date,visit_account_number,visit_date,reason,clinic,error,line"
        )
        #expect(
            lines[1].hasPrefix(
                "M2,Kay,Bo,2031-01-01,V3,2025-01-01,,south,\"birth_date: \"\"2031-01-01\"\" is in the future"
            )
        )
        #expect(lines[1].hasSuffix(",4"))
        #expect(lines[2].hasPrefix("M3,,Cy,1990-02-30"))
        #expect(lines[2].contains("last_name: \"\"\"\" is shorter than 1 characters"))
        #expect(lines[2].contains("birth_date: \"\"1990-02-30\"\" is not an RFC 3339 date"))
        #expect(lines[2].hasSuffix(",5"))
        let database = try view.database()
        let (files, patients, persons, history, visits) = try await database.read { db in
            (
                try Row.fetchOne(db, sql: "SELECT outcome, stored, duplicates, rejected, report FROM files")!,
                try Int.fetchOne(db, sql: "SELECT count(*) FROM patients")!,
                try Row.fetchAll(db, sql: "SELECT first_name, last_name FROM persons ORDER BY patient_id"),
                try Row.fetchAll(db, sql: "SELECT field, old_value, new_value FROM person_history"),
                try Row.fetchAll(db, sql: "SELECT visit_account_number, reason FROM visits ORDER BY id")
            )
        }
        #expect(files["outcome"] == "partial")
        #expect(files["stored"] == 3)
        #expect(files["rejected"] == 2)
        #expect((files["report"] as String).contains("extra columns ignored: clinic"))
        #expect(patients == 2)
        #expect(persons.map { $0["last_name"] as String } == ["Li", "Dee"])
        #expect(persons.map { $0["first_name"] as String } == ["Ann", "Di\nna"])
        #expect(
            history.map { "\($0["field"] as String) \($0["old_value"] as String)->\($0["new_value"] as String)" } == [
                "last_name Lee->Li"
            ]
        )
        #expect(visits.map { $0["reason"] as String? } == ["check, up", nil, "said \"hi\""])
        let line = try #require(log.split(separator: "\n").first { $0.contains("file finished") })
        #expect(line.contains("file.patients_created=2"))
        #expect(line.contains("file.patients_updated=1"))
        #expect(line.contains("file.visits_created=3"))
        #expect(!log.contains("Ann") && !log.contains("1980-02-01") && !log.contains("M1,"))
    }

    /// An upload that died mid-record (an sftp client killed during `put`: sshd closes the half file) is
    /// rejected whole, nothing stored, naming its last line and byte; the partner's re-send is then
    /// processed cleanly. A complete last line without a line end is no cut.
    @Test func anUploadCutMidRecordIsRejectedWholeAndItsResendIsStored() async throws {
        let body = intakeCSV(count: 50)
        let ndjson = (0..<30).map {
            "{\"mrn\":\"J\($0)\",\"first_name\":\"Zoë\",\"last_name\":\"Müller\",\"birth_date\":\"1980-01-02\","
                + "\"visit_account_number\":\"JV\($0)\",\"visit_date\":\"2025-03-01\"}\n"
        }.joined()
        let files: [(name: String, text: String)] = [
            ("cut.csv", body + "MRN999,Ann,Lee,1980-0"),
            ("quote.csv", intakeCSV(count: 5, start: 200) + "MRN998,Ann,Lee,1980-01-01,VAN998,2025-03-01,\"knee"),
            ("cut.ndjson", ndjson + "{\"mrn\":\"J99\",\"first_na"),
            ("whole.csv", String(intakeCSV(count: 20, start: 100).dropLast())),
            ("cut.csv", body + "MRN999,Ann,Lee,1980-01-01,VAN999,2025-03-01,\n"),
        ]
        let (view, _) = try await ingest(files)
        let database = try view.database()
        let rows = try await database.read { db in
            try Row.fetchAll(db, sql: "SELECT original_name, outcome, report FROM files ORDER BY received_at")
        }
        #expect(rows.map { $0["outcome"] as String } == ["rejected", "rejected", "rejected", "accepted", "accepted"])
        let reports = rows.map { $0["report"] as String }
        #expect(
            reports[0].contains(
                "truncated upload: last line incomplete (line 52, byte \(body.utf8.count))"
            ),
            "\(reports[0])"
        )
        #expect(reports[1].contains("truncated upload: last line incomplete (line 7,"), "\(reports[1])")
        #expect(reports[2].contains("truncated upload: last line incomplete (line 31,"), "\(reports[2])")
        let (visits, cutRows) = try await database.read { db in
            (
                try Int.fetchOne(db, sql: "SELECT count(*) FROM visits")!,
                try Int.fetchOne(db, sql: "SELECT count(*) FROM visits WHERE visit_account_number LIKE 'JV%'")!
            )
        }
        // Nothing of the cut files: the 20 of whole.csv and the 51 of the re-sent cut.csv.
        #expect(visits == 71 && cutRows == 0)
    }

    @Test func aMissingColumnRejectsTheFileNamingItAndRepeatsAreDuplicatesOrConflicts() async throws {
        let missing = "mrn,first_name,last_name,birth_date,visit_date,reason\nM1,A,B,1980-01-01,2025-01-01,x\n"
        let first = intakeHeader + "\nM1,A,B,1980-01-01,V1,2025-01-01,x\nM2,C,D,1981-01-01,V2,2025-01-01,\n"
        let again = intakeHeader + "\nM1,A,B,1980-01-01,V1,2025-01-01,x\n"
        // Conflicts change nothing: not a patient for a new MRN (M9: the writer inserts it before it finds
        // the visit taken, then deletes it), not the names of a known one (M2 as X Y).
        let conflict =
            intakeHeader
            + "\nM9,A,B,1980-01-01,V2,2025-01-01,\nM1,A,B,1980-01-01,V1,2025-01-02,x\nM2,X,Y,1981-01-01,V1,2025-01-01,x\n"
        let (view, _) = try await ingest([
            ("missing.csv", missing), ("first.csv", first), ("again.csv", again), ("conflict.csv", conflict),
        ])
        let rows = try await view.database().read { db in
            try Row.fetchAll(
                db,
                sql: "SELECT original_name, outcome, stored, duplicates, rejected, report FROM files ORDER BY id"
            )
        }
        #expect(rows.map { $0["outcome"] as String } == ["rejected", "accepted", "duplicate", "rejected"])
        #expect((rows[0]["report"] as String).contains("missing required column: visit_account_number"))
        #expect(rows[2]["duplicates"] == 1)
        let conflictReport = rows[3]["report"] as String
        #expect(conflictReport.contains("conflicts with the visit stored from file"))
        #expect(rows[3]["rejected"] == 3)
        let (patients, people, history) = try await view.database().read { db in
            (
                try String.fetchAll(db, sql: "SELECT mrn FROM patients ORDER BY mrn"),
                try String.fetchAll(db, sql: "SELECT first_name || ' ' || last_name FROM persons ORDER BY patient_id"),
                try Int.fetchOne(db, sql: "SELECT count(*) FROM person_history")
            )
        }
        #expect(patients == ["M1", "M2"])
        #expect(people == ["A B", "C D"])
        #expect(history == 0)
    }

    /// Keys and values are compared as SQLite stores them, byte for byte: a precomposed "é" and an "e"
    /// with a combining accent (equal to Swift's `==`) are two MRNs, a changed name, a different reason.
    @Test func textsEqualOnlyUnderUnicodeEquivalenceAreDifferentValues() async throws {
        let rows = [
            "M\u{E9},Ann,Lee,1980-02-01,V1,2025-01-01,",
            "Me\u{301},Ann,Lee,1980-02-01,V2,2025-01-01,",
            "M1,Ren\u{E9},Roe,1970-01-01,V3,2025-01-01,caf\u{E9}",
            "M1,Rene\u{301},Roe,1970-01-01,V4,2025-01-01,",
            "M1,Rene\u{301},Roe,1970-01-01,V3,2025-01-01,cafe\u{301}",
        ]
        let (view, _) = try await ingest([("unicode.csv", intakeHeader + "\n" + rows.joined(separator: "\n") + "\n")])
        let (file, patients, history) = try await view.database().read { db in
            (
                try Row.fetchOne(db, sql: "SELECT stored, duplicates, rejected, report FROM files")!,
                try Int.fetchOne(db, sql: "SELECT count(*) FROM patients")!,
                try Row.fetchAll(
                    db,
                    sql: "SELECT field, hex(old_value) AS old, hex(new_value) AS new FROM person_history"
                )
            )
        }
        #expect(patients == 3)
        #expect(
            history.map { "\($0["field"] as String) \($0["old"] as String)->\($0["new"] as String)" } == [
                "first_name 52656EC3A9->52656E65CC81"
            ]
        )
        #expect(file["stored"] == 4)
        #expect(file["duplicates"] == 0)
        #expect(file["rejected"] == 1)
        #expect((file["report"] as String).contains("conflicts with the visit stored from file"))
    }

    /// A row with more fields than the header is shifted (an unquoted comma, a value in no column): it
    /// is rejected with its line, never stored without its extra field; a header with no rows is a
    /// valid file of zero records, accepted with a note (issue 16, finding 8). Streamed, as the daemon
    /// reads every CSV.
    @Test func aShiftedRowIsRejectedWithItsLineAndAHeaderOnlyFileIsAcceptedEmpty() async throws {
        let shifted =
            intakeHeader + "\nM1,A,B,1980-01-01,V1,2025-01-01,x\nM2,A,B,1980-01-01,V2,2025-01-01,follow,up\n"
            + "M3,A,B,1980-01-01,V3,2025-01-01,\n"
        let (view, _) = try await ingest([
            ("shifted.csv", shifted), ("empty-day.csv", intakeHeader + "\r\n"),
            ("blank-rows.csv", intakeHeader + "\n\n\n"),
        ])
        let rows = try await view.database().read { db in
            try Row.fetchAll(db, sql: "SELECT outcome, stored, rejected, error, report FROM files ORDER BY id")
        }
        #expect(rows.map { $0["outcome"] as String } == ["partial", "accepted", "accepted"])
        #expect(rows.map { $0["stored"] as Int } == [2, 0, 0])
        #expect(rows[0]["rejected"] == 1)
        let report = try #require(FileReport(json: rows[0]["report"] as String))
        #expect(report.errors.map(\.text) == ["record 2: row has 8 fields; the header has 7 (line 3)"])
        for row in rows.dropFirst() {
            let empty = try #require(FileReport(json: row["report"] as String))
            #expect(empty.errors.isEmpty && empty.notes == [IntakeColumns.noRowsNote])
            #expect(row["error"] as String? == nil)
        }
        #expect(view.done("intake").count == 3 && view.failed("intake").isEmpty)
        let rejectedName = try #require(view.sidecars("intake").first { $0.hasSuffix(".rejected.csv") })
        let rejected = try String(contentsOfFile: view.root + "/failed/intake/" + rejectedName, encoding: .utf8)
        #expect(
            rejected.split(separator: "\n").last
                == "M2,A,B,1980-01-01,V2,2025-01-01,follow,up,row has 8 fields; the header has 7,3"
        )
        let visits = try await view.database().read { db in
            try String.fetchAll(db, sql: "SELECT visit_account_number FROM visits ORDER BY 1")
        }
        #expect(visits == ["V1", "V3"])
    }

    /// The same rules when a file is read whole (`validate`, tests): the row's problem, the empty file's
    /// note, and a header's extra columns allowing rows as wide as the header.
    @Test func theWholeFileReaderHasTheSameRules() throws {
        let reader = try projectCatalog().intake
        let shifted = reader.readCSV(
            Array((intakeHeader + "\nM1,A,B,1980-01-01,V1,2025-01-01,x,y\n").utf8),
            today: "2026-11-23"
        )
        guard case .failure(let problems) = shifted.items.first?.result else {
            Issue.record("stored a row of 8 fields under a header of 7")
            return
        }
        #expect(problems.list.map(\.text) == ["record 1: row has 8 fields; the header has 7 (line 2)"])
        let wider = reader.readCSV(
            Array(
                (intakeHeader + ",clinic\nM1,A,B,1980-01-01,V1,2025-01-01,x,north\nM2,A,B,1980-01-01,V2,2025-01-01,\n")
                    .utf8
            ),
            today: "2026-11-23"
        )
        #expect(wider.items.allSatisfy { if case .success = $0.result { true } else { false } })
        #expect(wider.notes == ["extra columns ignored: clinic"])
        let empty = reader.readCSV(Array((intakeHeader + "\n").utf8), today: "2026-11-23")
        #expect(empty.fileProblem == nil && empty.items.isEmpty && empty.notes == [IntakeColumns.noRowsNote])
        let dry = try dryRun(bytes: Array((intakeHeader + "\n").utf8), kind: .intake, catalog: projectCatalog())
        #expect(dry.outcome == .accepted && dry.stored == 0 && dry.notes == [IntakeColumns.noRowsNote])
        #expect(dry.json().contains("\"notes\":[\"\(IntakeColumns.noRowsNote)\"]"))
    }

    /// `validate` prints a file-level rejection's reason and a report's notes, and finds the schema
    /// outside the source tree: the configuration's, else the one installed beside the binary
    /// (PREFIX/share/carespool/schema.json for PREFIX/bin/carespool) — it said "cannot read the schema
    /// file schema.json".
    @Test func validateSaysWhyAndFindsTheInstalledSchema() async throws {
        let dir = TempDir("validate")
        defer { dir.cleanup() }
        let elsewhere = dir.path + "/elsewhere"
        for folder in [dir.path + "/bin", dir.path + "/share/carespool", elsewhere] {
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        }
        // An installed layout: the binary (a hard link, else a copy) in bin/, the schema in share/carespool/.
        let installed = dir.path + "/bin/carespool"
        if link(Daemon.binary, installed) != 0 {
            try FileManager.default.copyItem(atPath: Daemon.binary, toPath: installed)
        }
        try FileManager.default.copyItem(
            atPath: TestPaths.schemaJSON.path,
            toPath: dir.path + "/share/carespool/schema.json"
        )
        try (intakeHeader + "\n").write(toFile: elsewhere + "/empty.csv", atomically: true, encoding: .utf8)
        try "mrn,first_name\nM1,A\n".write(toFile: elsewhere + "/missing.csv", atomically: true, encoding: .utf8)

        let empty = try await Daemon.command(
            ["validate", "--kind", "intake", "empty.csv"],
            executable: installed,
            in: elsewhere
        )
        #expect(empty.status == .exited(0), "\(empty.err)")
        #expect(empty.out.contains("empty.csv: accepted"), "\(empty.out)")
        #expect(empty.out.contains("note: \(IntakeColumns.noRowsNote)"), "\(empty.out)")

        let missing = try await Daemon.command(
            ["validate", "--kind", "intake", "missing.csv"],
            executable: installed,
            in: elsewhere
        )
        #expect(missing.status == .exited(1))
        #expect(missing.out.contains("missing.csv: rejected"), "\(missing.out)")
        #expect(missing.out.contains("  file rejected: line 1: missing required columns: last_name"), "\(missing.out)")

        // The configuration's schema, from anywhere.
        let config = dir.path + "/carespool.toml"
        try "schema = \"\(TestPaths.schemaJSON.path)\"\n".write(toFile: config, atomically: true, encoding: .utf8)
        let configured = try await Daemon.command(
            ["validate", "--config", config, "--kind", "intake", "empty.csv"],
            in: elsewhere
        )
        #expect(configured.status == .exited(0), "\(configured.err)")
    }

    @Test func invalidUTF8RejectsOnlyItsRowWithItsLine() throws {
        let bytes =
            Array((intakeHeader + "\nM1,A,B,1980-01-01,V7,2025-01-01,x\n").utf8) + [0x4D, 0xFF, 0x2C]
            + Array("A,B,1980-01-01,V8,2025-01-01,\nM3,E,F,1982-01-01,V9,2025-01-01,\n".utf8)
        let parsed = try projectCatalog().intake.readCSV(bytes, today: "2026-11-23")
        #expect(parsed.items.count == 3)
        guard case .failure(let problems) = parsed.items[1].result else {
            Issue.record("accepted invalid UTF-8")
            return
        }
        #expect(problems.list.map(\.text) == ["record 2: invalid UTF-8 (line 3)"])
        #expect(parsed.items.filter { if case .success = $0.result { true } else { false } }.count == 2)
    }

    /// What spreadsheets save besides comma-separated UTF-8 is named as such: "Unicode text" (UTF-16 or
    /// UTF-32, with or without a byte-order mark) and semicolon- or tab-separated exports — not as a
    /// "bare CR line ending" or seven missing columns.
    @Test func aUTF16OrSemicolonSeparatedFileIsRejectedSayingSo() throws {
        let text = intakeHeader + "\r\nM1,A,B,1980-01-01,V1,2025-01-01,x\r\n"
        func utf16(_ bigEndian: Bool, mark: Bool) -> [UInt8] {
            let units = (mark ? [UInt16(0xFEFF)] : []) + Array(text.utf16)
            return units.flatMap { unit in
                bigEndian ? [UInt8(unit >> 8), UInt8(unit & 0xFF)] : [UInt8(unit & 0xFF), UInt8(unit >> 8)]
            }
        }
        let utf32LE =
            [0xFF, 0xFE, 0, 0]
            + text.unicodeScalars.flatMap { scalar -> [UInt8] in
                let value = scalar.value
                return [
                    UInt8(value & 0xFF), UInt8((value >> 8) & 0xFF), UInt8((value >> 16) & 0xFF), UInt8(value >> 24),
                ]
            }
        let cases: [([UInt8], String)] = [
            (utf16(false, mark: true), "the file is UTF-16 (little-endian byte-order mark), not UTF-8"),
            (utf16(true, mark: true), "the file is UTF-16 (big-endian byte-order mark), not UTF-8"),
            (utf16(false, mark: false), "the file is UTF-16 (little-endian), not UTF-8"),
            (utf16(true, mark: false), "the file is UTF-16 (big-endian), not UTF-8"),
            (utf32LE, "the file is UTF-32 (little-endian byte-order mark), not UTF-8"),
            (
                Array(text.replacingOccurrences(of: ",", with: ";").utf8),
                "(the header is one column separated by ';': intake files are comma-separated, RFC 4180)"
            ),
            (
                Array(text.replacingOccurrences(of: ",", with: "\t").utf8),
                "(the header is one column separated by tabs: intake files are comma-separated, RFC 4180)"
            ),
        ]
        let reader = try projectCatalog().intake
        for (bytes, expected) in cases {
            let parsed = reader.readCSV(bytes, today: "2026-11-23")
            #expect(parsed.items.isEmpty)
            #expect(parsed.fileProblem?.line == 1)
            #expect(parsed.fileProblem?.message.contains(expected) == true, "\(parsed.fileProblem?.message ?? "none")")
        }
        // A UTF-8 file with its byte-order mark stays a good file.
        let good = reader.readCSV([0xEF, 0xBB, 0xBF] + Array(text.utf8), today: "2026-11-23")
        #expect(good.fileProblem == nil && good.items.count == 1)
    }

    @Test func aJSONArrayOfIntakeRecordsIsTheSameRecords() async throws {
        let json = """
            [{"mrn":"J1","first_name":"A","last_name":"B","birth_date":"1980-01-01","visit_account_number":"JV1","visit_date":"2025-01-01","reason":null},
             {"mrn":"J1","first_name":"A","last_name":"B","birth_date":"1980-01-01","visit_account_number":"JV2","visit_date":"2024-01-01"},
             {"mrn":"J2","first_name":"","last_name":"B","birth_date":"1980-01-01","visit_account_number":"JV3","visit_date":"2025-01-01"}]
            """
        let (view, _) = try await ingest([("ingest.json", json)])
        let row = try await view.database().read { db in
            try Row.fetchOne(db, sql: "SELECT outcome, stored, rejected FROM files")
        }
        #expect(row?["outcome"] == "partial")
        #expect(row?["stored"] == 2)
        let sidecars = view.sidecars("intake")
        #expect(sidecars.contains { $0.hasSuffix(".rejected.ndjson") })
    }

    /// Neither the daemon's memory nor SQLite's write-ahead log grows with the file: the log is
    /// checkpointed between a large file's transactions (it had reached eight times the file's size).
    /// The transactions here are a second long (`--chunk-commit-ms 1000`): at the default five seconds
    /// this whole file is one or two, and the log holds every page they touch (30–36 MiB here).
    @Test func aLargeFileStreamsInBoundedMemoryAndABoundedLog() async throws {
        let dir = TempDir("intake-big")
        defer { dir.cleanup() }
        let spool = dir.path + "/spool"
        let count = 150_000
        let staged = dir.file("big.csv")
        try Data(intakeCSV(count: count).utf8).write(to: URL(fileURLWithPath: staged))
        let run = try await Daemon.serve(spool: spool, arguments: ["--chunk-commit-ms", "1000"]) { pid in
            try await waitUntilServing(spool)
            #expect(rename(staged, spool + "/inbox/intake/big.csv") == 0)
            var largestLog = 0
            let finished = await eventually(timeout: .seconds(300)) {
                var info = stat()
                if stat(spool + "/carespool.sqlite3-wal", &info) == 0 {
                    largestLog = max(largestLog, Int(info.st_size))
                }
                return SpoolView(root: spool).done("intake").count == 1
            }
            let peak = peakResidentBytes(pid)
            kill(pid, SIGTERM)
            return (finished, peak, largestLog)
        }
        #expect(run.result.0)
        let peak = try #require(run.result.1)
        // Flat whatever the file's size: ~40 MiB of binary and chunks, plus the writer's page cache (an
        // eighth of the memory budget, 32 MiB at the default).
        #expect(peak < 96 << 20, "peak resident memory \(peak >> 20) MiB")
        // 16 MiB between checkpoints and the transaction that passes it; without them, about 90 MiB here.
        let largestLog = run.result.2
        #expect(largestLog > 0 && largestLog < 40 << 20, "write-ahead log reached \(largestLog >> 20) MiB")
        print("intake streaming test: \(count) rows, peak RSS \(peak >> 20) MiB, largest log \(largestLog >> 20) MiB")
        let visits = try await SpoolView(root: spool).database().read { db in
            try Int.fetchOne(db, sql: "SELECT count(*) FROM visits")
        }
        #expect(visits == count)
    }

    @Test func killMinus9InTheMiddleOfABigFileThenRestartStoresEveryRowOnce() async throws {
        let dir = TempDir("intake-crash")
        defer { dir.cleanup() }
        let count = 40_000
        let text = await offThePool { intakeCSV(count: count) }
        // Each attempt a fresh spool and the file dropped anew: the kill comes from a thread of its own as
        // soon as 4,000 rows are committed (every 100 ms, `--chunk-commit-ms`; five seconds by default),
        // but a fast daemon may still finish first.
        let spool = try await killMidFile(in: dir, kind: "intake", count: "SELECT count(*) FROM visits", atLeast: 4_000)
        {
            try dropLikeRsync(text, into: $0 + "/inbox/intake", name: "big.csv")
        }
        let view = SpoolView(root: spool)
        #expect(try await finishAfterRestart(spool, kind: "intake", timeout: .seconds(180)))
        let (row, visits, patients, history) = try await view.database().read { db in
            (
                try Row.fetchOne(db, sql: "SELECT outcome, stored, duplicates, rejected, report FROM files"),
                try Int.fetchOne(db, sql: "SELECT count(*) FROM visits"),
                try Int.fetchOne(db, sql: "SELECT count(*) FROM patients"),
                try Int.fetchOne(db, sql: "SELECT count(*) FROM person_history")
            )
        }
        #expect(row?["outcome"] == "accepted")
        #expect(row?["stored"] == count)
        #expect(row?["duplicates"] == 0)
        #expect(visits == count)
        let distinctMRNs = Set(
            intakeCSV(count: count).split(separator: "\n").dropFirst().map { $0.split(separator: ",")[0] }
        )
        #expect(patients == distinctMRNs.count)
        // Repeated MRNs carry other names: each change is in the history exactly once, replay or not.
        let expectedChanges = try Self.expectedHistory(text)
        #expect(history == expectedChanges)
    }

    /// Name/birth-date changes a file implies, applied in order.
    static func expectedHistory(_ text: String) throws -> Int {
        var people: [String: [String]] = [:]
        var changes = 0
        for line in text.split(separator: "\n").dropFirst() {
            let f = line.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
            let person = [f[1], f[2], f[3]]
            if let old = people[f[0]] { changes += zip(old, person).filter { $0 != $1 }.count }
            people[f[0]] = person
        }
        return changes
    }
}
