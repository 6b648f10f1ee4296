import Config
import Crypto
import Foundation
import GRDB
import Kinds
import Logging
import PostgresNIO
import PostgresStore
import Store
import Subprocess
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The store's location: SQLite paths, PostgreSQL URLs in libpq's forms, and what is refused.
@Suite struct DatabaseURLTests {
    @Test func sqlitePathsStayPaths() throws {
        #expect(
            try DatabaseLocation.parse("/var/lib/carespool/carespool.sqlite3")
                == .sqlite(path: "/var/lib/carespool/carespool.sqlite3")
        )
        #expect(try DatabaseLocation.parse("spool/x.sqlite3") == .sqlite(path: "spool/x.sqlite3"))
        // A colon in a file name is a file name; a scheme is not.
        #expect(try DatabaseLocation.parse("db:1.sqlite3") == .sqlite(path: "db:1.sqlite3"))
        for wrong in ["mysql://u@h/db", "sqlite://x", "http://h/db"] {
            #expect(throws: DatabaseURLError.self) { try DatabaseLocation.parse(wrong) }
        }
    }

    @Test func postgresURLsInLibpqsForms() throws {
        func target(_ url: String) throws -> PostgresTarget {
            guard case .postgres(let target) = try DatabaseLocation.parse(url) else {
                Issue.record("\(url) is not a PostgreSQL URL")
                throw PostgresServerError(message: "not PostgreSQL")
            }
            return target
        }
        let tcp = try target("postgres://carespool@db.clinic.example:6432/carespool")
        #expect(tcp.user == "carespool" && tcp.database == "carespool")
        #expect(tcp.endpoint == .tcp(host: "db.clinic.example", port: 6432))
        #expect(tcp.tls == .prefer)
        let other = try target("postgresql://svc@10.0.0.5/spool?sslmode=verify-full")
        #expect(other.endpoint == .tcp(host: "10.0.0.5", port: 5432) && other.tls == .verifyFull)
        let v6 = try target("postgres://svc@[::1]:5433/db?sslmode=require")
        #expect(v6.endpoint == .tcp(host: "::1", port: 5433) && v6.tls == .require)
        let socket = try target("postgres:///carespool?host=/run/postgresql")
        #expect(socket.endpoint == .socket(path: "/run/postgresql/.s.PGSQL.5432"))
        #expect(socket.user == PostgresTarget.processUser)
        let socketPort = try target("postgres://svc@/db?host=/tmp/pg%20dir&port=6000")
        #expect(socketPort.endpoint == .socket(path: "/tmp/pg dir/.s.PGSQL.6000"))
        let noHost = try target("postgres://svc@/db")
        #expect(noHost.endpoint == .socket(path: "/run/postgresql/.s.PGSQL.5432"))
        let escaped = try target("postgres://se%C3%B1or@h/caf%C3%A9")
        #expect(escaped.user == "señor" && escaped.database == "café")
    }

    @Test func sslmodesAreLibpqs() throws {
        #expect(SiteDatabase.tlsSettings(.disable) == nil)
        let prefer = try #require(SiteDatabase.tlsSettings(.prefer))
        #expect(!prefer.required && prefer.0.certificateVerification == .none)
        let require = try #require(SiteDatabase.tlsSettings(.require))
        #expect(require.required && require.0.certificateVerification == .none)
        let verify = try #require(SiteDatabase.tlsSettings(.verifyFull))
        #expect(verify.required && verify.0.certificateVerification == .fullVerification)
    }

    @Test func aPasswordInTheURLIsRefusedWithoutBeingRepeated() {
        for url in [
            "postgres://carespool:hunter2@db/carespool", "postgres://carespool@db/carespool?password=hunter2",
            "postgresql://u:hunter2%40ss@h:5432/d", "postgres://carespool:hun/ter2@/site?host=/d",
            "postgres://u:hun#ter2@h/db", "postgres://u@h/db?host=/d&foo=1&password=hunter2",
            "postgres://u@h/db?pass%77ord=hunter2", "POSTGRES://u:hunter2@h/db",
        ] {
            do {
                _ = try DatabaseLocation.parse(url)
                Issue.record("\(url) accepted")
            } catch {
                #expect(error.description.contains("password_file"), "\(url): \(error)")
                #expect(!error.description.contains("hunter2") && !error.description.contains("ter2"), "\(error)")
            }
        }
        // Malformed otherwise: refused by a rule that never repeats the URL, a password in it or not.
        for url in [
            "postgres://carespool:hun?ter2@x/db", "postgres://u@h/db?sslmode=bad&password=hunter2",
            "postgres://u@h/db?host=a&host=b&password=hunter2", "postgres://u@h/db?HUNTER2=1",
        ] {
            do {
                _ = try DatabaseLocation.parse(url)
                Issue.record("\(url) accepted")
            } catch {
                #expect(!error.description.lowercased().contains("hunter2") && !error.description.contains("ter2"))
            }
        }
    }

    @Test func malformedURLsAreNamedWithTheirRule() {
        let cases: [(String, String)] = [
            ("postgres://u@h/", "name the database"),
            ("postgres://u@h:99999/db", "port"),
            ("postgres://u@h:x/db", "port"),
            ("postgres://u@h/db/extra", "database's name alone"),
            ("postgres://u@h/db?sslmode=allow", "sslmode"),
            ("postgres://u@h/db?options=-c%20x", "not a parameter"),
            ("postgres://u@h/db?host=a&host=b", "twice"),
            ("postgres://u@[::1/db", "IPv6"),
            ("postgres://u@h/d%zz", "hex"),
            ("postgres://u@h/d%ff", "UTF-8"),
            ("postgres:///db?host=/run/postgresql&sslmode=require", "Unix socket"),
            ("postgres://u@h/db?connect_timeout=5", "not a parameter"),
            ("postgres://u@h/db?host=", "host= is empty"),
            ("postgres:site", "starts postgres://"),
            ("postgres://u@h/" + String(repeating: "d", count: 64), "63 bytes"),
        ]
        for (url, rule) in cases {
            do {
                _ = try DatabaseLocation.parse(url)
                Issue.record("\(url) accepted")
            } catch {
                #expect(error.description.contains(rule), "\(url): \(error)")
            }
        }
    }

    @Test func theConfigurationNamesTheStoreAsAStringOrATable() throws {
        let kinds = ["appointments", "zoom", "intake"]
        let plain = try ConfigFile(text: "database = \"/var/lib/c.sqlite3\"\n", path: "c.toml", kinds: kinds)
        #expect(plain.database == "/var/lib/c.sqlite3" && plain.databasePasswordFile == nil)
        let table = try ConfigFile(
            text: "[database]\nurl = \"postgres://carespool@db/carespool\"\npassword_file = \"/etc/carespool/db.pw\"\n",
            path: "c.toml",
            kinds: kinds
        )
        #expect(table.database == "postgres://carespool@db/carespool")
        #expect(table.databasePasswordFile == "/etc/carespool/db.pw")
        let refusals: [(String, String)] = [
            ("[database]\nurl = \"postgres://u:pw@db/c\"\n", "database.url"),
            ("[database]\npassword_file = \"/x\"\n", "needs its url"),
            ("[database]\nurl = \"/x.sqlite3\"\npassword_file = \"/x\"\n", "SQLite file has no password"),
            ("[database]\nurl = \"postgres://u@db/c\"\nuser = \"x\"\n", "unknown key"),
            ("database = \"mysql://u@db/c\"\n", "not a store"),
        ]
        for (text, rule) in refusals {
            do {
                _ = try ConfigFile(text: text, path: "c.toml", kinds: kinds)
                Issue.record("accepted: \(text)")
            } catch {
                #expect(error.description.contains(rule), "\(text): \(error)")
                #expect(!error.description.contains(":pw@"), "\(error)")
            }
        }
    }
}

/// The PostgreSQL store's migrations, frozen: their digests are the ones that shipped.
@Suite struct PostgresMigrationsFrozenTests {
    @Test func theMigrationsAreTheTextsThatShipped() {
        // Computed independently of the code's digest: SHA-256 of each statement followed by ";\n".
        for migration in PostgresMigrations.all {
            let text = migration.statements.map { $0 + ";\n" }.joined()
            let digest = SHA256.hash(data: Array(text.utf8)).map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }
                .joined()
            #expect(migration.digest == digest)
        }
        #expect(PostgresMigrations.all.map(\.version) == Array(1...PostgresMigrations.all.count))
        #expect(
            PostgresMigrations.all[0].digest == "69295e5e3c46f15e23456e9d6e648e6bb4586115c4a312fff3708bd2eb92c1c5"
        )
    }
}

/// Against a real PostgreSQL server started for each test (initdb + pg_ctl, Unix socket only).
@Suite(.serialized) struct PostgresStoreTests {
    static func migrate(_ server: PostgresServer, _ url: String, passwordFile: String, check: Bool = false) async throws
        -> (status: TerminationStatus, out: String, err: String)
    {
        try await Daemon.command(
            ["migrate", "--db", url, "--db-password-file", passwordFile] + (check ? ["--check"] : [])
        )
    }

    @Test func hostsStartingTogetherOnAnEmptyDatabaseMigrateItOnce() async throws {
        try await PostgresServer.with { server in
            let password = try await server.createDatabase("site", role: "carespool")
            let file = try server.passwordFile(password)
            let url = server.url("site", role: "carespool")
            let check = try await Self.migrate(server, url, passwordFile: file, check: true)
            #expect(check.status == .exited(1), "\(check)")
            #expect(check.err.contains("lacks migration v1"), "\(check.err)")
            // Four hosts at the same moment.
            let results = try await withThrowingTaskGroup(of: (TerminationStatus, String, String).self) { group in
                for _ in 0..<4 { group.addTask { try await Self.migrate(server, url, passwordFile: file) } }
                var all: [(TerminationStatus, String, String)] = []
                for try await result in group { all.append(result) }
                return all
            }
            for result in results { #expect(result.0 == .exited(0), "\(result)") }
            #expect(results.filter { $0.1.contains("applied v1") }.count == 1, "\(results)")
            #expect(results.filter { $0.1.contains("up to date at v1") }.count == 3, "\(results)")
            #expect(try await server.psql("SELECT count(*) FROM carespool_migrations", database: "site") == "1")
            #expect(try await server.psql("SELECT count(*) FROM files", database: "site") == "0")
            let after = try await Self.migrate(server, url, passwordFile: file, check: true)
            #expect(after.status == .exited(0) && after.out.contains("up to date at v1"), "\(after)")
        }
    }

    @Test func theSchemaHasSQLitesTablesColumnsAndKeys() async throws {
        let sqlite = TempDir("pg-parity")
        let path = sqlite.file("parity.sqlite3")
        _ = try AppDatabase.open(path: path)
        let queue = try DatabaseQueue(path: path)
        let (liteColumns, liteIndexes) = try await queue.read { db in
            var columns: [String: Set<String>] = [:]
            var indexes: [String: Bool] = [:]
            for table in try String.fetchAll(
                db,
                sql:
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name != 'grdb_migrations'"
            ) {
                columns[table] = Set(
                    try Row.fetchAll(db, sql: "PRAGMA table_info(\(table))").map { $0["name"] as String }
                )
                for index in try Row.fetchAll(db, sql: "PRAGMA index_list(\(table))") {
                    let name: String = index["name"]
                    if name.hasPrefix("sqlite_autoindex") { continue }
                    indexes[name] = (index["unique"] as Int) == 1
                }
            }
            return (columns, indexes)
        }
        try await PostgresServer.with { server in
            let password = try await server.createDatabase("parity", role: "carespool")
            let result = try await Self.migrate(
                server,
                server.url("parity", role: "carespool"),
                passwordFile: try server.passwordFile(password)
            )
            #expect(result.status == .exited(0), "\(result)")
            let columnRows = try await server.psql(
                "SELECT table_name || '.' || column_name FROM information_schema.columns WHERE table_schema = 'public' "
                    + "AND table_name != 'carespool_migrations'",
                database: "parity"
            )
            var pgColumns: [String: Set<String>] = [:]
            for line in columnRows.split(separator: "\n") {
                let parts = line.split(separator: ".", maxSplits: 1)
                pgColumns[String(parts[0]), default: []].insert(String(parts[1]))
            }
            // The host that gave each file its verdict included (SQLite's since v11).
            #expect(liteColumns["files"]?.contains("host") == true)
            #expect(pgColumns == liteColumns)
            let indexRows = try await server.psql(
                """
                SELECT c.relname || '|' || i.indisunique FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = 'public' AND NOT i.indisprimary AND c.relname NOT LIKE '%_key'
                   OR (n.nspname = 'public' AND c.relname IN ('zoom_events_key', 'zoom_report_key'))
                """,
                database: "parity"
            )
            var pgIndexes: [String: Bool] = [:]
            for line in indexRows.split(separator: "\n") {
                let parts = line.split(separator: "|")
                pgIndexes[String(parts[0])] = parts[1] == "true"
            }
            var expectedIndexes = liteIndexes
            expectedIndexes["files_by_host"] = false
            #expect(pgIndexes == expectedIndexes)
            // The natural keys SQLite declares inline (UNIQUE columns, composite UNIQUE) exist too.
            let constraints = try await server.psql(
                "SELECT conrelid::regclass || ':' || conname FROM pg_constraint WHERE contype = 'u' "
                    + "AND connamespace = 'public'::regnamespace ORDER BY 1",
                database: "parity"
            )
            #expect(
                constraints.split(separator: "\n").map(String.init)
                    == [
                        "appointment_events:appointment_events_appointment_id_instant_key", "patients:patients_mrn_key",
                        "visits:visits_visit_account_number_key",
                    ]
            )
        }
    }

    /// Under another character type PostgreSQL lower-cases "É" and SQLite does not: a database that is not
    /// C is refused, with the way to make one, by `migrate` and by every command that opens the store.
    @Test func aDatabaseWhoseCharacterTypeIsNotCIsRefusedSayingHowToMakeOne() async throws {
        try await PostgresServer.with { server in
            let password = try await server.createDatabase("site", role: "carespool")
            try await server.psql("CREATE DATABASE wide OWNER carespool LOCALE 'C.utf8' TEMPLATE template0")
            let passwordFile = try server.passwordFile(password)
            let refused = try await Self.migrate(
                server,
                server.url("wide", role: "carespool"),
                passwordFile: passwordFile
            )
            #expect(refused.status == .exited(78), "\(refused)")
            #expect(
                refused.err.contains("LC_CTYPE 'C.utf8'") && refused.err.contains("--locale=C"),
                "\(refused.err)"
            )
            #expect(try await server.psql("SELECT to_regclass('files') IS NULL", database: "wide") == "t")
            let status = try await Daemon.command(
                [
                    "status", "--spool", TempDir("wide").path, "--db", server.url("wide", role: "carespool"),
                    "--db-password-file", passwordFile,
                ]
            )
            #expect(status.err.contains("LC_CTYPE"), "\(status)")
            let fine = try await Self.migrate(server, server.url("site", role: "carespool"), passwordFile: passwordFile)
            #expect(fine.status == .exited(0), "\(fine)")
        }
    }

    @Test func aSchemaEditedOrNewerIsRefusedUntouched() async throws {
        try await PostgresServer.with { server in
            let password = try await server.createDatabase("site", role: "carespool")
            let file = try server.passwordFile(password)
            let url = server.url("site", role: "carespool")
            #expect(try await Self.migrate(server, url, passwordFile: file).status == .exited(0))
            try await server.psql("UPDATE carespool_migrations SET digest = repeat('0', 64)", database: "site")
            let edited = try await Self.migrate(server, url, passwordFile: file)
            #expect(edited.status == .exited(65), "\(edited)")
            #expect(edited.err.contains("migration v1 in the database differs"), "\(edited.err)")
            let digest = PostgresMigrations.all[0].digest
            try await server.psql(
                "UPDATE carespool_migrations SET digest = '\(digest)';"
                    + "INSERT INTO carespool_migrations (version, name, digest, applied_by) VALUES (99, 'v99: later', repeat('a', 64), 'h')",
                database: "site"
            )
            let newer = try await Self.migrate(server, url, passwordFile: file)
            #expect(newer.status == .exited(65), "\(newer)")
            #expect(newer.err.contains("v99") && newer.err.contains("newer carespool"), "\(newer.err)")
            #expect(try await server.psql("SELECT count(*) FROM carespool_migrations", database: "site") == "2")
        }
    }

    /// The record of migrations says what was run; the tables say what is there. A key dropped, a column
    /// changed or a unique index added by hand is refused by `migrate` (and so by `serve` at start) and by
    /// `migrate --check`, naming the change; a plain index added is not; put back, all is well again.
    @Test func tablesChangedByHandAreRefusedNamingTheChange() async throws {
        try await PostgresServer.with { server in
            let password = try await server.createDatabase("site", role: "carespool")
            let file = try server.passwordFile(password)
            let url = server.url("site", role: "carespool")
            #expect(try await Self.migrate(server, url, passwordFile: file).status == .exited(0))
            func both(_ what: String, status: Int32, saying expected: [String]) async throws {
                for check in [false, true] {
                    let result = try await Self.migrate(server, url, passwordFile: file, check: check)
                    #expect(result.status == .exited(status), "\(what), check \(check): \(result)")
                    for text in expected { #expect(result.err.contains(text), "\(what): \(result.err)") }
                }
            }
            try await server.psql("CREATE INDEX by_date ON visits (visit_date)", database: "site")
            try await both("a plain index added", status: 0, saying: [])
            try await server.psql(
                "ALTER TABLE visits DROP CONSTRAINT visits_visit_account_number_key",
                database: "site"
            )
            try await both(
                "a unique key dropped",
                status: 65,
                saying: [
                    "not those its migrations made", "visits lacks constraint UNIQUE (visit_account_number)",
                    "visits lacks unique index btree (visit_account_number)", "Nothing was written",
                ]
            )
            try await server.psql(
                "ALTER TABLE visits ADD CONSTRAINT renamed UNIQUE (visit_account_number)",
                database: "site"
            )
            try await both("the key put back under another name", status: 0, saying: [])
            try await server.psql("ALTER TABLE patients ALTER COLUMN mrn DROP NOT NULL", database: "site")
            try await both(
                "a column changed",
                status: 65,
                saying: ["patients lacks column mrn text NOT NULL", "patients has an added column mrn text"]
            )
            try await server.psql("ALTER TABLE patients ALTER COLUMN mrn SET NOT NULL", database: "site")
            try await server.psql("CREATE UNIQUE INDEX one_a_day ON visits (visit_date)", database: "site")
            try await both(
                "a unique index added",
                status: 65,
                saying: ["visits has an added unique index btree (visit_date)"]
            )
            try await server.psql("DROP INDEX one_a_day", database: "site")
            try await both("as it was", status: 0, saying: [])
            // Without TEMP (intake stages its rows in a temporary table): said, with the grant that gives it.
            try await server.psql("REVOKE TEMP ON DATABASE site FROM PUBLIC, carespool")
            try await both("no TEMP", status: 78, saying: ["may not create temporary tables", "GRANT TEMP"])
            #expect(try await server.psql("SELECT count(*) FROM files", database: "site") == "0")
        }
    }

    @Test func aWrongPasswordOrNoServerIsNamedAndNoPasswordIsShown() async throws {
        try await PostgresServer.with { server in
            _ = try await server.createDatabase("site", role: "carespool")
            let wrong = try server.passwordFile("not-the-password-42")
            let refused = try await Self.migrate(server, server.url("site", role: "carespool"), passwordFile: wrong)
            #expect(refused.status == .exited(78), "\(refused)")
            #expect(refused.err.contains("28P01"), "\(refused.err)")
            #expect(!refused.err.contains("not-the-password-42") && !refused.out.contains("not-the-password-42"))
            // Nobody listens on this socket folder: transient, exit 69.
            let nowhere = "postgres://carespool@/site?host=\(server.folder)-nowhere"
            let down = try await Self.migrate(server, nowhere, passwordFile: wrong)
            #expect(down.status == .exited(69), "\(down)")
            #expect(down.err.contains("cannot reach"), "\(down.err)")
        }
    }

    @Test func aPasswordFileTheStoreCannotUseIsAConfigurationErrorAndNotifyIsAccepted() async throws {
        let dir = TempDir("pg-config")
        defer { dir.cleanup() }
        let open = dir.file("open.pw")
        try Data("secret-password\n".utf8).write(to: URL(fileURLWithPath: open))
        chmod(open, 0o644)
        let config = dir.file("c.toml")
        try """
        spool = "\(dir.path)/spool"
        schema = "\(TestPaths.schemaJSON.path)"
        [database]
        url = "postgres://carespool@/site?host=\(dir.path)"
        password_file = "\(open)"
        """.write(toFile: config, atomically: true, encoding: .utf8)
        let check = try await Daemon.command(["config", "check", config])
        #expect(check.status == .exited(78), "\(check)")
        #expect(
            check.err.contains("database.password_file") && check.err.contains("readable by everyone"),
            "\(check.err)"
        )
        let serve = try await Daemon.command(["serve", "--config", config, "--http", "off"])
        #expect(serve.status == .exited(78), "\(serve)")
        let migrate = try await Daemon.command(["migrate", "--config", config])
        #expect(migrate.status == .exited(78), "\(migrate)")
        chmod(open, 0o600)
        try """
        spool = "\(dir.path)/spool"
        schema = "\(TestPaths.schemaJSON.path)"
        [notify]
        command = "/bin/true"
        [database]
        url = "postgres://carespool@/site?host=\(dir.path)"
        password_file = "\(open)"
        """.write(toFile: config, atomically: true, encoding: .utf8)
        // [notify] with PostgreSQL: each host delivers its own verdicts (PostgresServeTests).
        let notify = try await Daemon.command(["config", "check", config])
        #expect(notify.status == .exited(0), "\(notify)")
        #expect(!check.err.contains("secret-password") && !notify.out.contains("secret-password"))
    }

    @Test func theOperatorCommandsReadTheWholeSiteAndSayWhichHostHoldsEachFile() async throws {
        try await PostgresLedgerTests.withHosts { server, one, two in
            // Host h1: a good file and a partial one; host h2: a rejected one and an intake file.
            _ = try await one.commit(
                [
                    PostgresLedgerTests.file("op-1", event("OP-1", "2026-09-01T10:00:00Z", patient: "P-Zoë")),
                    PostgresLedgerTests.file(
                        "op-2",
                        event("OP-2", "2026-09-01T11:00:00Z") + "\n{\"event_type\":\"appointment.scheduled\"}\n",
                        name: "mixed-bag.ndjson"
                    ),
                ],
                finishedAt: "2026-12-06T10:00:00.000Z"
            )
            _ = try await two.commit(
                [
                    PostgresLedgerTests.file("op-3", "{not json", name: "broken.ndjson"),
                    PostgresIntakeTests.file("op-4", intakeHeader + "\nM-Ø1,Zoë,Ålander,1980-02-29,V-1,2025-01-02,\n"),
                    PostgresZoomTests.file(
                        "op-5",
                        PostgresZoomTests.joined(1_764_000_000_000, "u-1", "Zoë Ålander", uuid: "OPV==")
                    ),
                ],
                finishedAt: "2026-12-06T11:00:00.000Z"
            )
            let dir = TempDir("pg-operators")
            defer { dir.cleanup() }
            // An operator's own role, a member of carespool's.
            let password = "Rd-\(UUID().uuidString)"
            try await server.psql("CREATE ROLE reader LOGIN PASSWORD '\(password)'; GRANT carespool TO reader")
            let passwordFile = try server.passwordFile(password)
            let store = [
                "--spool", dir.path, "--db", server.url("site", role: "reader"), "--db-password-file", passwordFile,
            ]
            func run(_ command: [String]) async throws -> (status: TerminationStatus, out: String, err: String) {
                try await Daemon.command(command + store)
            }
            let failed = try await run(["failed"])
            #expect(failed.status == .exited(0), "\(failed.err)")
            #expect(failed.out.contains("HOST"), "\(failed.out)")
            let lines = failed.out.split(separator: "\n")
            #expect(
                lines.contains { $0.contains("op-2") && $0.contains("partial") && $0.contains("h1") },
                "\(failed.out)"
            )
            #expect(
                lines.contains { $0.contains("op-3") && $0.contains("rejected") && $0.contains("h2") },
                "\(failed.out)"
            )
            let narrowed = try await run(["failed", "--host", "h2", "--json"])
            #expect(narrowed.out.contains("\"id\":\"op-3\"") && narrowed.out.contains("\"host\":\"h2\""))
            #expect(!narrowed.out.contains("op-2"), "\(narrowed.out)")
            let show = try await run(["show", "op-4"])
            #expect(show.status == .exited(0), "\(show.err)")
            #expect(show.out.contains("host       h2") && show.out.contains("outcome    accepted"), "\(show.out)")
            let report = try await run(["report", "--json"])
            #expect(report.out.contains("\"host\":\"h1\"") && report.out.contains("\"host\":\"h2\""), "\(report.out)")
            let reportOne = try await run(["report", "--host", "h1"])
            #expect(reportOne.out.contains("h1") && !reportOne.out.contains("h2"), "\(reportOne.out)")
            let patients = try await run(["query", "patients", "--json"])
            #expect(patients.out.contains("\"mrn\":\"M-Ø1\"") && patients.out.contains("Ålander"), "\(patients.out)")
            let visits = try await run(["query", "visits", "--mrn", "M-Ø1"])
            #expect(visits.out.contains("V-1") && visits.out.contains("op-4"), "\(visits.out)")
            let appointments = try await run(["query", "appointments"])
            #expect(appointments.out.contains("OP-1") && appointments.out.contains("P-Zoë"), "\(appointments.out)")
            let events = try await run(["query", "appointments", "--json"])
            #expect(events.out.contains("\"appointment_id\":\"OP-2\""), "\(events.out)")
            let status = try await run(["status"])
            #expect(status.status == .exited(0), "\(status.err)")
            #expect(status.out.contains("op-3") && status.out.contains("h2"), "\(status.out)")
            // Reading patient data is in the shared audit trail, with who and from which host.
            let audit = try await run(["audit", "--json"])
            #expect(audit.out.contains("\"action\":\"query.patients\""), "\(audit.out)")
            #expect(audit.out.contains(" on \(SiteDatabase.hostName)"), "\(audit.out)")
            #expect(audit.out.contains("\"action\":\"file.partial\""), "\(audit.out)")
            // No password, no patient data in what the commands say on stderr.
            for result in [failed, show, report, patients, status, audit] { #expect(!result.err.contains(password)) }
            // A Zoom meeting's visits, as Zoom prints its id.
            let zoom = try await run(["query", "zoom", "--meeting", "852 1848 6288"])
            #expect(zoom.status == .exited(0), "\(zoom.err)")
            #expect(zoom.out.contains("visit OPV==") && zoom.out.contains("u-1 (Zoë Ålander)"), "\(zoom.out)")
            let none = try await run(["query", "zoom", "--meeting", "123"])
            #expect(none.status == .exited(1) && none.out.contains("no visits of meeting 123"), "\(none.out)")
            // What a SQLite file cannot answer: `--host`.
            let sqliteHost = try await Daemon.command(["failed", "--spool", dir.path, "--host", "h1"])
            #expect(sqliteHost.status != .exited(0) && sqliteHost.err.contains("--host"), "\(sqliteHost.err)")
        }
    }

    @Test func theOperatorCommandsSayWhenTheSiteDoesNotAnswer() async throws {
        let dir = TempDir("pg-operators-down")
        defer { dir.cleanup() }
        let password = dir.file("pw")
        try "not-the-password".write(toFile: password, atomically: true, encoding: .utf8)
        chmod(password, 0o600)
        let url = "postgres://carespool@/site?host=\(dir.path)"
        for command in [["failed"], ["report"], ["audit"], ["query", "visits"]] {
            let result = try await Daemon.command(
                command + ["--spool", dir.path, "--db", url, "--db-password-file", password]
            )
            #expect(result.status == .exited(69), "\(command): \(result.status) \(result.err)")
            #expect(result.err.contains("/site"), "\(command): the store is named: \(result.err)")
            #expect(!result.err.contains("not-the-password"))
        }
        // status still shows the spool, then says the store did not answer.
        let status = try await Daemon.command(
            ["status", "--spool", dir.path, "--db", url, "--db-password-file", password]
        )
        #expect(status.status == .exited(69), "\(status.err)")
        #expect(status.out.contains("folder") && status.out.contains("inbox"), "\(status.out)")
    }

    @Test func aDeadlockedTransactionIsRunAgainByItself() async throws {
        try await PostgresServer.with { server in
            let password = try await server.createDatabase("site", role: "carespool")
            guard case .postgres(let target) = try DatabaseLocation.parse(server.url("site", role: "carespool")) else {
                Issue.record("not a PostgreSQL URL")
                return
            }
            let database = try SiteDatabase(target: target, password: password, host: "test-host")
            do {
                try await database.migrate()
                _ = try await database.transaction { connection in
                    try await connection.query(
                        "CREATE TABLE pair (k INTEGER PRIMARY KEY, v INTEGER NOT NULL)",
                        logger: Logger(label: "t")
                    )
                    try await connection.query("INSERT INTO pair VALUES (1, 0), (2, 0)", logger: Logger(label: "t"))
                }
                let attempts = Attempts()
                // Two transactions take the same two rows in opposite orders, each pausing between: the
                // server breaks the deadlock by aborting one (40P01), which runs again and succeeds.
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for (first, second) in [(1, 2), (2, 1)] {
                        group.addTask {
                            try await database.transaction { connection in
                                attempts.add()
                                let log = Logger(label: "t")
                                try await connection.query("UPDATE pair SET v = v + 1 WHERE k = \(first)", logger: log)
                                try await Task.sleep(for: .milliseconds(300))
                                try await connection.query("UPDATE pair SET v = v + 1 WHERE k = \(second)", logger: log)
                            }
                        }
                    }
                    try await group.waitForAll()
                }
                // One of the two ran again (a loaded machine may deadlock them once more: still by itself,
                // within the tries allowed); each one's updates counted once.
                #expect((3...SiteDatabase.transactionTries * 2).contains(attempts.count), "\(attempts.count) attempts")
                #expect(
                    try await server.psql("SELECT string_agg(v::text, ',' ORDER BY k) FROM pair", database: "site")
                        == "2,2"
                )
                #expect(
                    try await server.psql("SELECT applied_by FROM carespool_migrations", database: "site")
                        == "test-host"
                )
            } catch {
                await database.close()
                throw error
            }
            await database.close()
        }
    }
}

final class Attempts: @unchecked Sendable {
    private let lock = NSLock()
    private var value = 0
    func add() { lock.withLock { value += 1 } }
    var count: Int { lock.withLock { value } }
}

/// The ledger and appointments in PostgreSQL: SQLite's verdicts, and exactly once across hosts.
@Suite(.serialized) struct PostgresLedgerTests {
    static func sha(_ text: String) -> String {
        SHA256.hash(data: Array(text.utf8)).map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
    }

    static func file(_ id: String, _ text: String, name: String? = nil) throws -> PreparedFile {
        var file = PreparedFile(
            id: id,
            kind: .appointments,
            originalName: name ?? id + ".ndjson",
            sha256: sha(text),
            size: text.utf8.count,
            receivedAt: "2026-12-06T00:00:00.000Z",
            content: .appointments(try projectCatalog().appointments.read(Array(text.utf8)))
        )
        file.sender = "partner-a"
        return file
    }

    /// Two hosts' stores on one new database, migrated; `body` runs with them, closed afterwards.
    static func withHosts<R: Sendable>(
        _ body: (PostgresServer, SiteDatabase, SiteDatabase) async throws -> R
    ) async throws -> R {
        try await PostgresServer.with { server in
            let password = try await server.createDatabase("site", role: "carespool")
            guard case .postgres(let target) = try DatabaseLocation.parse(server.url("site", role: "carespool")) else {
                throw PostgresServerError(message: "not PostgreSQL")
            }
            let one = try SiteDatabase(target: target, password: password, host: "h1")
            let two = try SiteDatabase(target: target, password: password, host: "h2")
            do {
                try await one.migrate()
                let result = try await body(server, one, two)
                await one.close()
                await two.close()
                return result
            } catch {
                await one.close()
                await two.close()
                throw error
            }
        }
    }

    @Test func aHostsBatchesGetTheVerdictsSQLiteGives() async throws {
        let notes = "Dr. Müller, 2nd floor — Zoë's follow-up"
        // Keys in no order, repeats, conflicts, a bad record, a byte-identical copy, an empty file.
        let batches: [[(String, String)]] = [
            [
                (
                    "f01",
                    [
                        event("A-7", "2026-03-01T10:00:00Z", patient: "P-Ø1", notes: notes),
                        event("A-2", "2026-03-01T09:00:00+01:00"),
                        event("A-7", "2026-03-02T10:00:00Z", type: "cancelled", patient: "P-Ø1"),
                        event("A-2", "2026-03-01T09:00:00+01:00"),
                    ].joined(separator: "\n")
                ),
                ("f02", event("A-9", "2026-03-05T08:00:00Z") + "\n{\"event_type\":\"appointment.scheduled\"}\n"),
            ],
            [
                (
                    "f03",
                    [
                        event("A-2", "2026-03-01T08:00:00Z", patient: "P-other"),
                        event("A-7", "2026-03-03T10:00:00Z", type: "updated", patient: "P-Ø1"),
                        event("A-1", "2026-02-28T23:59:59.5Z"),
                    ].joined(separator: "\n")
                ),
                ("f04", event("A-9", "2026-03-05T08:00:00Z") + "\n{\"event_type\":\"appointment.scheduled\"}\n"),
                ("f05", ""),
                ("f06", "{not json"),
            ],
            // One batch: the same bytes twice (the second a duplicate of the first), the same conflicting
            // bytes twice (both rejected: the second is written after the first stored nothing), a key the
            // batch's first file stored, sent again otherwise by a later one.
            [
                ("f07", event("B-1", "2026-04-01T10:00:00Z") + "\n" + event("B-2", "2026-04-01T11:00:00Z")),
                ("f08", event("B-1", "2026-04-01T10:00:00Z") + "\n" + event("B-2", "2026-04-01T11:00:00Z")),
                ("f09", event("A-2", "2026-03-01T09:00:00+01:00", patient: "P-intruder")),
                ("f10", event("A-2", "2026-03-01T09:00:00+01:00", patient: "P-intruder")),
                (
                    "f11",
                    event("B-2", "2026-04-01T11:00:00Z", patient: "P-other") + "\n"
                        + event("B-3", "2026-04-02T10:00:00Z")
                ),
            ],
        ]
        let dir = TempDir("pg-verdicts")
        defer { dir.cleanup() }
        let lite = try AppDatabase.open(path: dir.file("v.sqlite3"))
        var liteReports: [String] = []
        for batch in batches {
            let files = try batch.map { try Self.file($0.0, $0.1) }
            liteReports += try lite.commit(files, finishedAt: "2026-12-06T00:00:01.000Z").map { $0.report.json() }
        }
        let liteState = try await lite.writer.read { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT appointment_id, patient_id, status, notes, event_type, event_instant, event_timestamp, file_id
                    FROM appointments ORDER BY 1
                    """
            ).map { row in (0..<row.count).map { "\(row[$0] as DatabaseValue)" }.joined(separator: "|") }
        }
        try await Self.withHosts { server, one, _ in
            var reports: [String] = []
            for batch in batches {
                let files = try batch.map { try Self.file($0.0, $0.1) }
                reports += try await one.commit(files, finishedAt: "2026-12-06T00:00:01.000Z").map { $0.report.json() }
            }
            #expect(reports == liteReports)
            #expect(reports.count == 11)
            #expect(reports[7].contains("\"duplicate_of\":\"f07\""), "\(reports[7])")
            #expect(reports[8].contains("\"rejected\"") && reports[9].contains("\"rejected\""), "\(reports[9])")
            #expect(reports[10].contains("conflicts with the event stored from file f07"), "\(reports[10])")
            #expect(reports[3].contains("\"duplicate\""), "f04 is f02's bytes: \(reports[3])")
            #expect(reports[2].contains("conflicts with the event stored from file f01"), "\(reports[2])")
            let state = try await server.psql(
                """
                SELECT appointment_id || '|' || patient_id || '|' || status || '|' || coalesce(notes, 'NULL') || '|' ||
                       event_type || '|' || event_instant || '|' || event_timestamp || '|' || file_id
                FROM appointments ORDER BY 1
                """,
                database: "site"
            )
            let expected = liteState.map { $0.replacingOccurrences(of: "\"", with: "") }
            #expect(state.split(separator: "\n").map(String.init) == expected)
            #expect(try await server.psql("SELECT DISTINCT host FROM files", database: "site") == "h1")
            #expect(
                try await server.psql("SELECT count(*) FROM audit WHERE actor = 'partner-a'", database: "site") == "11"
            )
        }
    }

    /// `first` committed by `one` and `second` by `two` at the same moment; their records stored and
    /// duplicates in all, none rejected.
    static func commitAtOnce(
        _ one: SiteDatabase,
        _ first: [PreparedFile],
        _ two: SiteDatabase,
        _ second: [PreparedFile]
    ) async throws -> (stored: Int, duplicates: Int) {
        async let a = one.commit(first, finishedAt: "2026-12-06T00:00:03.000Z")
        async let b = two.commit(second, finishedAt: "2026-12-06T00:00:03.000Z")
        var counts = (stored: 0, duplicates: 0)
        for report in try await (a + b).map(\.report) {
            counts.stored += report.stored
            counts.duplicates += report.duplicates
            #expect(report.rejected == 0, "\(report.json())")
        }
        return counts
    }

    @Test func theSameBytesOnTwoHostsAtOnceAreAcceptedOnceAndADuplicateOnce() async throws {
        try await Self.withHosts { server, one, two in
            for round in 0..<25 {
                let text = (0..<20).map { event("R\(round)-\($0 % 7)", "2026-04-0\(1 + $0 % 9)T10:00:0\($0 % 10)Z") }
                    .shuffled().joined(separator: "\n")
                let first = try Self.file("r\(round)-h1", text)
                let second = try Self.file("r\(round)-h2", text)
                async let a = one.commit([first], finishedAt: "2026-12-06T00:00:02.000Z")
                async let b = two.commit([second], finishedAt: "2026-12-06T00:00:02.000Z")
                let (left, right) = try await (a[0].report, b[0].report)
                let outcomes = [left.outcome, right.outcome].map(\.rawValue).sorted()
                #expect(outcomes == ["accepted", "duplicate"], "round \(round): \(left.json()) \(right.json())")
                let duplicate = left.outcome == .duplicate ? left : right
                #expect(duplicate.duplicateOf == (left.outcome == .duplicate ? second.id : first.id))
            }
            #expect(try await server.psql("SELECT count(*) FROM files", database: "site") == "50")
            // Every natural key once.
            #expect(
                try await server.psql(
                    "SELECT count(*) = count(DISTINCT (appointment_id, instant)) FROM appointment_events",
                    database: "site"
                ) == "t"
            )
            #expect(try await server.psql("SELECT count(DISTINCT host) FROM files", database: "site") == "2")
        }
    }

    @Test func overlappingFilesFromTwoHostsStoreEveryKeyOnce() async throws {
        try await Self.withHosts { server, one, two in
            var stored = 0
            var duplicates = 0
            for round in 0..<10 {
                let events = (0..<60).map {
                    event("O\(round)-\($0)", "2026-05-01T10:\(String(format: "%02d", $0)):00Z", patient: "Pé\($0 % 5)")
                }
                // The same keys in opposite orders, in files that differ (so no byte-identity lock serialises
                // them): their key locks would cross if written in file order.
                let forward = try Self.file("o\(round)-h1", events.joined(separator: "\n"))
                let backward = try Self.file("o\(round)-h2", events.reversed().joined(separator: "\n"))
                let counts = try await Self.commitAtOnce(one, [forward], two, [backward])
                stored += counts.stored
                duplicates += counts.duplicates
            }
            #expect(stored == 600 && duplicates == 600)
            #expect(try await server.psql("SELECT count(*) FROM appointment_events", database: "site") == "600")
            #expect(try await server.psql("SELECT count(*) FROM appointments", database: "site") == "600")
        }
    }

    @Test func aFileTheSharedLedgerHasIsReplayedOnAnotherHostNotWrittenAgain() async throws {
        try await Self.withHosts { server, one, two in
            let file = try Self.file("replay-1", event("Z-1", "2026-06-01T10:00:00Z"))
            let first = try await one.commit([file], finishedAt: "2026-12-06T00:00:04.000Z")[0]
            #expect(!first.replayed && first.report.outcome == .accepted)
            // A host that claimed it too (a restart finishing processing/) consults the shared ledger by id.
            #expect(try await two.hasLedgerRow(id: "replay-1"))
            let again = try await two.commit([file], finishedAt: "2026-12-06T00:00:05.000Z")[0]
            #expect(again.replayed && again.report == first.report)
            #expect(again.finishedAt == "2026-12-06T00:00:04.000Z")
            #expect(try await two.ledgerHost(id: "replay-1") == "h1")
            #expect(try await server.psql("SELECT count(*) FROM audit", database: "site") == "1")
            #expect(
                try await one.earlierFile(kind: .appointments, sha256: file.sha256, excluding: "other") == "replay-1"
            )
        }
    }

    @Test func aBackendEndedMidTransactionIsTransientTroubleAtOnce() async throws {
        try await Self.withHosts { server, one, _ in
            let started = ContinuousClock.now
            // Ended once it is seen sleeping (tried again until then: a loaded machine may start it late).
            async let ended: Void = {
                for _ in 0..<200 {
                    try await Task.sleep(for: .milliseconds(300))
                    let ended = try await server.psql(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = "
                            + "'carespool' AND state = 'active' AND query LIKE '%pg_sleep%'"
                    )
                    if ended != "0" { return }
                }
            }()
            do {
                _ = try await one.transaction { connection in
                    try await connection.query("SELECT pg_sleep(120)", logger: Logger(label: "t"))
                }
                Issue.record("the transaction outlived its backend")
            } catch let error as PostgresStoreError {
                #expect(error.transient, "\(error)")
            }
            try await ended
            // At once, not at the sleep's end (120 s): room for psql's starts on a loaded machine.
            #expect(ContinuousClock.now - started < .seconds(60))
            // The store goes on with a new connection.
            let file = try Self.file("after-1", event("T-1", "2026-06-01T10:00:00Z"))
            #expect(try await one.commit([file], finishedAt: "2026-12-06T00:00:07.000Z")[0].report.outcome == .accepted)
        }
    }
}

/// Real `carespool serve` processes, each on its own spool, against one PostgreSQL database.
@Suite(.serialized) struct PostgresServeTests {
    /// `carespool serve` on `spool` while `body` runs; then SIGTERM. A daemon that does not stop within 30 s
    /// has its threads' stacks written to /tmp/carespool-hang-PID.txt (gdb) and is killed: a daemon that
    /// hangs fails its test (its status is then SIGKILL), it never hangs the suite. A body that throws
    /// kills the daemon first (else the run would wait for it for ever).
    static func serving<R: Sendable>(
        spool: String,
        arguments: [String],
        _ body: @escaping @Sendable (pid_t) async throws -> R
    ) async throws -> (result: R, status: TerminationStatus, log: String) {
        try await Daemon.serve(spool: spool, arguments: arguments) { pid in
            let result: R
            do {
                result = try await body(pid)
            } catch {
                kill(pid, SIGKILL)
                throw error
            }
            kill(pid, SIGTERM)
            Task.detached {
                try? await Task.sleep(for: .seconds(30))
                guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                    let close = stat.lastIndex(of: ")"), stat[stat.index(close, offsetBy: 2)] != "Z"
                else { return }
                _ = try? await PostgresServer.shell(
                    "gdb -p \(pid) -batch -ex 'thread apply all bt' > /tmp/carespool-hang-\(pid).txt 2>&1",
                    asServer: false
                )
                kill(pid, SIGKILL)
            }
            return result
        }
    }

    /// The stacks of a daemon that did not stop, if one was recorded.
    static func hang(_ log: String) -> String {
        let files = (try? FileManager.default.contentsOfDirectory(atPath: "/tmp")) ?? []
        let stacks = files.filter { $0.hasPrefix("carespool-hang-") }.compactMap {
            try? String(contentsOfFile: "/tmp/" + $0, encoding: .utf8)
        }
        return log + "\n" + stacks.joined(separator: "\n---\n")
    }

    /// Names of the regular files under `folder` (recursively), dot-files aside.
    static func files(_ folder: String) -> [String] {
        guard let walker = FileManager.default.enumerator(atPath: folder) else { return [] }
        var names: [String] = []
        for case let path as String in walker {
            var isDirectory: ObjCBool = false
            let name = (path as NSString).lastPathComponent
            if FileManager.default.fileExists(atPath: folder + "/" + path, isDirectory: &isDirectory),
                !isDirectory.boolValue, !name.hasPrefix(".")
            {
                names.append(path)
            }
        }
        return names
    }

    @Test func twoHostsStoreEveryFileOnceThroughAKillAndARestart() async throws {
        try await PostgresServer.with { server in
            let password = try await server.createDatabase("site", role: "carespool")
            let passwordFile = try server.passwordFile(password)
            let url = server.url("site", role: "carespool")
            let one = TempDir("pg-host1")
            let two = TempDir("pg-host2")
            defer {
                one.cleanup()
                two.cleanup()
            }
            let arguments1 = ["--db", url, "--db-password-file", passwordFile, "--host-name", "host-one"]
            let arguments2 = ["--db", url, "--db-password-file", passwordFile, "--host-name", "host-two"]
            // What was sent: the same bytes to both hosts, and files of each host's own whose keys overlap.
            var keys = Set<String>()
            func text(_ prefix: String, _ range: Range<Int>) -> String {
                range.map { n -> String in
                    keys.insert("M-\(n % 40)|2026-07-\(String(format: "%02d", 1 + n % 28))")
                    return event(
                        "M-\(n % 40)",
                        "2026-07-\(String(format: "%02d", 1 + n % 28))T09:00:00Z",
                        patient: "Pé-\(n % 9)"
                    )
                }.joined(separator: "\n") + "\n"
            }
            let shared = (0..<12).map { ("same-\($0).ndjson", text("s", ($0 * 5)..<($0 * 5 + 9))) }
            let own1 = (0..<10).map { ("a-\($0).ndjson", text("a", ($0 * 7)..<($0 * 7 + 11))) }
            let own2 = (0..<10).map { ("b-\($0).ndjson", text("b", ($0 * 3 + 100)..<($0 * 3 + 113))) }
            let own2Late = (10..<30).map { ("b-\($0).ndjson", text("b", ($0 * 3 + 100)..<($0 * 3 + 113))) }
            let dropped = (one: shared.count + own1.count, two: shared.count + own2.count + own2Late.count)

            let first = try await Self.serving(spool: one.path, arguments: arguments1) { pid1 in
                try await waitUntilServing(one.path)
                let second = try await Self.serving(spool: two.path, arguments: arguments2) { pid2 in
                    try await waitUntilServing(two.path)
                    for (name, body) in shared {
                        try dropLikeRsync(body, into: one.path + "/inbox/appointments", name: name)
                        try dropLikeRsync(body, into: two.path + "/inbox/appointments", name: name)
                    }
                    for (name, body) in own1 {
                        try dropLikeRsync(body, into: one.path + "/inbox/appointments", name: name)
                    }
                    for (name, body) in own2 {
                        try dropLikeRsync(body, into: two.path + "/inbox/appointments", name: name)
                    }
                    // A second wave to host two, killed -9 as soon as it has claimed some of it.
                    for (name, body) in own2Late {
                        try dropLikeRsync(body, into: two.path + "/inbox/appointments", name: name)
                    }
                    let twoPath = two.path
                    _ = await signal(pid2, SIGKILL, when: { !Self.files(twoPath + "/processing/appointments").isEmpty })
                    return pid1
                }
                #expect(second.status == .signaled(SIGKILL), "\(second.log)")
                // Host one finishes its files meanwhile.
                let onePath = one.path
                let done1 = await eventually(timeout: .seconds(60)) {
                    Self.files(onePath + "/done/appointments").count == dropped.one
                }
                #expect(done1, "host one: \(Self.files(onePath))")
                return ()
            }
            #expect(first.status == .exited(0), "\(Self.hang(first.log))")
            // Host two again: it finishes what it had in processing/ from the shared ledger or anew.
            let restarted = try await Self.serving(spool: two.path, arguments: arguments2) { pid in
                let twoPath = two.path
                let done = await eventually(timeout: .seconds(60)) {
                    Self.files(twoPath + "/done/appointments").count == dropped.two
                        && Self.files(twoPath + "/processing/appointments").isEmpty
                }
                #expect(done, "host two: \(Self.files(twoPath))")
            }
            #expect(restarted.status == .exited(0), "\(Self.hang(restarted.log))")
            for dir in [one, two] {
                #expect(Self.files(dir.path + "/failed").isEmpty, "\(Self.files(dir.path + "/failed"))")
                #expect(Self.files(dir.path + "/inbox").isEmpty)
            }
            // The database: one ledger row per file each host took, every key stored once.
            #expect(
                try await server.psql("SELECT count(*) FROM files", database: "site") == "\(dropped.one + dropped.two)"
            )
            #expect(
                try await server.psql("SELECT count(*) FROM appointment_events", database: "site") == "\(keys.count)"
            )
            #expect(
                try await server.psql(
                    "SELECT string_agg(DISTINCT host, ',' ORDER BY host) FROM files",
                    database: "site"
                )
                    == "host-one,host-two"
            )
            // Each shared file: accepted (or partial) once, a duplicate on the other host.
            let pairs = try await server.psql(
                """
                SELECT original_name || ':' || string_agg(outcome, ',' ORDER BY outcome) FROM files
                WHERE original_name LIKE 'same-%' GROUP BY original_name ORDER BY 1
                """,
                database: "site"
            )
            for line in pairs.split(separator: "\n") {
                let outcomes = line.split(separator: ":")[1].split(separator: ",").map(String.init)
                #expect(outcomes.count == 2 && outcomes.filter { $0 == "duplicate" }.count >= 1, "\(line)")
            }
            #expect(pairs.split(separator: "\n").count == shared.count)
        }
    }

    /// A large file (past a 64 KiB stream threshold: read and stored chunk by chunk, each chunk committed)
    /// dropped as `name` into inbox/`kind` of a new host on `server`'s database "site"; the daemon killed
    /// (-9) once `table` holds 4,000 rows, `between` run on what it left, then served again until the file
    /// is in done/. Checks that the kill landed mid-file and that the second run ended cleanly; returns
    /// both runs' logs.
    static func killedMidFileThenFinished(
        _ server: PostgresServer,
        kind: String,
        name: String,
        text: String,
        rows: Int,
        table: String,
        between: (_ spool: String, _ arguments: [String]) async throws -> Void = { _, _ in }
    ) async throws -> (killed: String, restarted: String) {
        let password = try await server.createDatabase("site", role: "carespool")
        let passwordFile = try server.passwordFile(password)
        let spool = TempDir("pg-stream-\(kind)")
        defer { spool.cleanup() }
        let arguments = [
            "--db", server.url("site", role: "carespool"), "--db-password-file", passwordFile, "--host-name",
            "host-one", "--stream-threshold", "65536",
        ]
        let path = spool.path
        let killed = try await Self.serving(spool: path, arguments: arguments) { pid in
            try await waitUntilServing(path)
            try dropLikeRsync(text, into: path + "/inbox/" + kind, name: name)
            let deadline = ContinuousClock.now + .seconds(60)
            while ContinuousClock.now < deadline {
                let stored = Int(try await server.psql("SELECT count(*) FROM \(table)", database: "site")) ?? 0
                if stored >= 4_000 { break }
                try await Task.sleep(for: .milliseconds(10))
            }
            kill(pid, SIGKILL)
        }
        #expect(killed.status == .signaled(SIGKILL))
        let stored = Int(try await server.psql("SELECT count(*) FROM \(table)", database: "site")) ?? 0
        #expect(stored >= 4_000 && stored < rows, "the kill landed after \(stored) of \(rows) rows")
        try await between(path, arguments)
        let restarted = try await Self.serving(spool: path, arguments: arguments) { _ in
            await eventually(timeout: .seconds(120)) { Self.files(path + "/done/" + kind).count == 1 }
        }
        #expect(restarted.result && restarted.status == .exited(0), "\(Self.hang(restarted.log))")
        return (killed.log, restarted.log)
    }

    @Test func aLargeIntakeFileStreamsInChunksAndAKillMinus9MidFileStoresEveryRowOnce() async throws {
        try await PostgresServer.with { server in
            let count = 30_000
            let text = await offThePool { intakeCSV(count: count) }
            let logs = try await Self.killedMidFileThenFinished(
                server,
                kind: "intake",
                name: "big.csv",
                text: text,
                rows: count,
                table: "visits"
            ) { path, arguments in
                let processing = Self.files(path + "/processing/intake")
                #expect(
                    processing.count == 1 && processing.allSatisfy { $0.hasSuffix("--big.csv") },
                    "\(processing)"
                )
                // Its row says processing, on this host: no ledger row yet.
                let row = try await server.psql("SELECT outcome || '|' || host FROM files", database: "site")
                #expect(row == "processing|host-one")
                // An operator asking for it (a conflict elsewhere may name it) learns where it is being stored.
                let fileID =
                    (processing.first ?? "").components(separatedBy: "/").last?.components(separatedBy: "--")[0] ?? ""
                let show = try await Daemon.command(["show", fileID] + arguments.prefix(4) + ["--spool", path])
                #expect(show.out.contains("in processing on host host-one"), "\(show.out)\(show.err)")
                let shown = try await Daemon.command(
                    ["show", fileID, "--json"] + arguments.prefix(4) + ["--spool", path]
                )
                #expect(
                    shown.out.contains("\"ledger\":null")
                        && shown.out.contains("\"processing\":{\"host\":\"host-one\"}"),
                    "\(shown.out)"
                )
            }
            let verdict = try await server.psql(
                "SELECT outcome || '|' || stored || '|' || duplicates || '|' || rejected || '|' || host FROM files",
                database: "site"
            )
            #expect(verdict == "accepted|\(count)|0|0|host-one")
            #expect(try await server.psql("SELECT count(*) FROM visits", database: "site") == "\(count)")
            let mrns = Set(text.split(separator: "\n").dropFirst().map { $0.split(separator: ",")[0] })
            #expect(try await server.psql("SELECT count(*) FROM patients", database: "site") == "\(mrns.count)")
            #expect(try await server.psql("SELECT count(*) FROM persons", database: "site") == "\(mrns.count)")
            // Repeated MRNs carry other names: each change in the history once, replay or not.
            let history = try await server.psql("SELECT count(*) FROM person_history", database: "site")
            #expect(history == "\(try IntakeDaemonTests.expectedHistory(text))")
            #expect(!logs.killed.contains("MRN1") && !logs.restarted.contains("MRN1"))
        }
    }

    @Test func aLargeZoomExportStreamsInChunksAndAKillMinus9MidFileStoresEveryEventOnce() async throws {
        try await PostgresServer.with { server in
            // 30,000 events of five visits: each participant joins and leaves once.
            let count = 30_000
            let text =
                (0..<count).map { n in
                    let who = n / 2
                    let at = 1_764_000_000_000 + Int64(who) * 1_000
                    return n % 2 == 0
                        ? PostgresZoomTests.joined(at, "p-\(who)", "Zoë \(who % 97)", uuid: "X\(who % 5)==")
                        : PostgresZoomTests.left(at + 500, "p-\(who)", "Zoë \(who % 97)", uuid: "X\(who % 5)==")
                }.joined(separator: "\n") + "\n"
            _ = try await Self.killedMidFileThenFinished(
                server,
                kind: "zoom",
                name: "export.ndjson",
                text: text,
                rows: count,
                table: "zoom_events"
            )
            let verdict = try await server.psql(
                "SELECT outcome || '|' || stored || '|' || duplicates || '|' || rejected FROM files",
                database: "site"
            )
            #expect(verdict == "accepted|\(count)|0|0")
            #expect(try await server.psql("SELECT count(*) FROM zoom_events", database: "site") == "\(count)")
            // Every event counted once, replayed chunks not again; every visit whole, refreshed with the verdict.
            #expect(
                try await server.psql(
                    "SELECT sum(received) || '|' || sum(inserted) FROM zoom_counters",
                    database: "site"
                )
                    == "\(count)|\(count)"
            )
            let visits = try await server.psql(
                """
                SELECT string_agg(visit_uuid || ':' || participants || ':' || events, ',' ORDER BY visit_uuid)
                FROM zoom_visits
                """,
                database: "site"
            )
            #expect(visits == "X0==:3000:6000,X1==:3000:6000,X2==:3000:6000,X3==:3000:6000,X4==:3000:6000")
            #expect(
                try await server.psql(
                    "SELECT count(*) FROM zoom_visit_intervals WHERE joined_at IS NOT NULL AND left_at IS NOT NULL",
                    database: "site"
                ) == "\(count / 2)"
            )
        }
    }

    @Test func filesWaitInProcessingWhileTheDatabaseIsDownAndNoneFails() async throws {
        try await PostgresServer.with { server in
            let password = try await server.createDatabase("site", role: "carespool")
            let passwordFile = try server.passwordFile(password)
            let spool = TempDir("pg-down")
            defer { spool.cleanup() }
            let path = spool.path
            let result = try await Self.serving(
                spool: spool.path,
                arguments: ["--db", server.url("site", role: "carespool"), "--db-password-file", passwordFile]
            ) { pid in
                try await waitUntilServing(path)
                try dropLikeRsync(
                    event("D-0", "2026-08-01T10:00:00Z"),
                    into: path + "/inbox/appointments",
                    name: "d0.json"
                )
                #expect(await eventually { Self.files(path + "/done/appointments").count == 1 })
                // Files in flight when the server stops (fast: it ends every backend): their batch ends as
                // transient trouble, never hangs, never fails.
                for n in 0..<30 {
                    let body = (0..<150).map { event("F-\(n)-\($0)", "2026-08-02T10:00:00Z", patient: "Pé") }
                    try dropLikeRsync(
                        body.joined(separator: "\n"),
                        into: path + "/inbox/appointments",
                        name: "f\(n).json"
                    )
                }
                _ = await eventually(timeout: .seconds(5)) { !Self.files(path + "/processing/appointments").isEmpty }
                try await server.pause()
                for n in 1...5 {
                    try dropLikeRsync(
                        event("D-\(n)", "2026-08-01T10:00:00Z"),
                        into: path + "/inbox/appointments",
                        name: "d\(n).json"
                    )
                }
                // Claimed, tried, kept: in processing/, never in failed/.
                #expect(await eventually { Self.files(path + "/processing/appointments").count >= 5 })
                #expect(Self.files(path + "/failed").isEmpty)
                // Down past the 10 s a batch waits for a connection: the files meet transient trouble.
                try await Task.sleep(for: .seconds(13))
                #expect(Self.files(path + "/failed").isEmpty, "\(Self.files(path + "/failed"))")
                do {
                    try await server.startAgain()
                } catch {
                    Issue.record("start again: \(error)")
                }
                // d1 waits for its retry (the backoff after the first transient trouble), the others go at once.
                let done = await eventually(timeout: .seconds(90)) {
                    Self.files(path + "/done/appointments").count == 36
                        && Self.files(path + "/processing/appointments").isEmpty
                }
                #expect(done, "\(Self.files(path))")
            }
            #expect(result.status == .exited(0), "\(Self.hang(result.log))")
            #expect(Self.files(spool.path + "/failed").isEmpty)
            // The warning says why: the store's own words, never a value.
            #expect(result.log.contains("retry.reason=PostgreSQL: "), "\(result.log)")
            let ledger = try await server.psql(
                "SELECT original_name || ':' || outcome FROM files ORDER BY 1",
                database: "site"
            )
            #expect(ledger.split(separator: "\n").count == 36, "\(ledger)\n\(Self.files(spool.path))")
            #expect(try await server.psql("SELECT count(*) FROM appointment_events", database: "site") == "4506")
        }
    }

    @Test func eachHostDeliversTheNotificationsOfItsOwnVerdictsOnce() async throws {
        try await PostgresServer.with { server in
            let password = try await server.createDatabase("site", role: "carespool")
            let passwordFile = try server.passwordFile(password)
            let url = server.url("site", role: "carespool")
            let one = TempDir("pg-notify1")
            let two = TempDir("pg-notify2")
            defer {
                one.cleanup()
                two.cleanup()
            }
            // Each host's hook appends what it is told to its own log; its first call fails (a retry).
            func hook(_ dir: TempDir) throws -> (config: String, log: String) {
                let log = dir.file("hook.log")
                let fail = dir.file("fail")
                try "1\n".write(toFile: fail, atomically: true, encoding: .utf8)
                let script = dir.file("hook")
                try """
                #!/bin/sh
                input=$(cat)
                if [ -s \(fail) ]; then sed -i 1d \(fail); exit 1; fi
                echo "$CARESPOOL_FILE_ID $CARESPOOL_OUTCOME $CARESPOOL_ATTEMPT" >> \(log)
                """.write(toFile: script, atomically: true, encoding: .utf8)
                chmod(script, 0o755)
                let config = dir.file("carespool.toml")
                try "[notify]\ncommand = \"\(script)\"\nretry_initial_ms = 200\n".write(
                    toFile: config,
                    atomically: true,
                    encoding: .utf8
                )
                return (config, log)
            }
            let hooks = [try hook(one), try hook(two)]
            let dirs = [one, two]
            let arguments = (0..<2).map { n in
                ["--config", hooks[n].config, "--db", url, "--db-password-file", passwordFile, "--host-name", "h\(n)"]
            }
            let bad = "{\"event_type\":\"appointment.scheduled\"}\n"
            _ = try await Self.serving(spool: one.path, arguments: arguments[0]) { _ in
                try await waitUntilServing(one.path)
                _ = try await Self.serving(spool: two.path, arguments: arguments[1]) { _ in
                    try await waitUntilServing(two.path)
                    for n in 0..<2 {
                        // A partial and a rejected file to each host, and the same partial bytes to both.
                        let inbox = dirs[n].path + "/inbox/appointments"
                        try dropLikeRsync(
                            event("N\(n)", "2026-10-01T10:00:00Z") + "\n" + bad,
                            into: inbox,
                            name: "p.json"
                        )
                        try dropLikeRsync(bad, into: inbox, name: "r.json")
                        try dropLikeRsync(event("NS", "2026-10-02T10:00:00Z") + "\n" + bad, into: inbox, name: "s.json")
                    }
                    // Until all six have a verdict and every verdict owed (not a duplicate) was told.
                    var delivered = false
                    let deadline = ContinuousClock.now + .seconds(30)
                    while !delivered && ContinuousClock.now < deadline {
                        let counts = try await server.psql(
                            "SELECT count(*) || ' ' || count(*) FILTER (WHERE outcome <> 'duplicate') FROM files",
                            database: "site"
                        )
                        let told = hooks.map { NotifyDaemonTests.lines($0.log).count }.reduce(0, +)
                        delivered = counts == "6 \(told)"
                        if !delivered { try await Task.sleep(for: .milliseconds(100)) }
                    }
                    #expect(delivered, "\(hooks.map { NotifyDaemonTests.lines($0.log) })")
                    try await Task.sleep(for: .seconds(1))
                }
            }
            // Each host was told of its own three verdicts, once each (the shared bytes: partial on one host,
            // a duplicate — not notified — on the other, or partial on both if neither had finished first).
            let ledger = try await server.psql(
                "SELECT host || ' ' || id || ' ' || outcome FROM files ORDER BY 1",
                database: "site"
            ).split(separator: "\n").map(String.init)
            for n in 0..<2 {
                let told = NotifyDaemonTests.lines(hooks[n].log)
                let owed = ledger.filter { $0.hasPrefix("h\(n) ") && !$0.hasSuffix(" duplicate") }
                #expect(Set(told.map { $0.split(separator: " ").prefix(2).joined(separator: " ") }).count == told.count)
                #expect(
                    told.map { String($0.split(separator: " ")[0]) }.sorted()
                        == owed.map { String($0.split(separator: " ")[1]) }.sorted(),
                    "host h\(n) told \(told), owed \(owed)"
                )
                #expect(told.contains { $0.hasSuffix(" 2") }, "the first delivery failed, the second is attempt 2")
            }
            #expect(try await server.psql("SELECT count(*) FROM notifications", database: "site") == "0")
        }
    }

    /// Every kind's inbox is watched with PostgreSQL too: Zoom webhooks, reports in the default inbox's
    /// zone and in a partner inbox's own (its settings travel with the file), the same timelines and
    /// `query zoom` answers as a SQLite host given the same drops.
    @Test func zoomWebhooksAndReportsInTheirInboxesZonesMakeTheTimelinesSQLiteMakes() async throws {
        try await PostgresServer.with { server in
            let password = try await server.createDatabase("site", role: "carespool")
            let passwordFile = try server.passwordFile(password)
            let dir = TempDir("pg-kinds")
            defer { dir.cleanup() }
            func run(_ name: String, _ store: [String]) async throws -> (status: TerminationStatus, zoom: [String]) {
                let spool = dir.path + "/" + name + "/spool"
                let partner = dir.path + "/" + name + "/partner-eu"
                try FileManager.default.createDirectory(atPath: partner, withIntermediateDirectories: true)
                let config = dir.path + "/" + name + "/carespool.toml"
                try """
                [zoom_report]
                timezone = "America/Chicago"

                [[inbox]]
                path = "\(partner)"
                kind = "zoom-report"
                timezone = "Europe/London"
                date_order = "DD/MM/YYYY"
                clock = "24h"
                """.write(toFile: config, atomically: true, encoding: .utf8)
                let drops: [(String, String, String)] = [
                    ("events.ndjson", ZoomReportStoreTests.webhooks, spool + "/inbox/zoom"),
                    (
                        "participants_93812345678.csv", try ReportFixtures.text("participants_93812345678.csv"),
                        spool + "/inbox/zoom-report"
                    ),
                    (
                        "reports-api-pages.json", try ReportFixtures.text("reports-api-pages.json"),
                        spool + "/inbox/zoom-report"
                    ),
                    ("layout-b-flattened.csv", try ReportFixtures.text("layout-b-flattened.csv"), partner),
                ]
                let result = try await Self.serving(
                    spool: spool,
                    arguments: ["--config", config, "--settle-ms", "200"] + store
                ) { _ in
                    try await waitUntilServing(spool)
                    let view = SpoolView(root: spool)
                    for (index, (file, text, folder)) in drops.enumerated() {
                        try dropLikeRsync(text, into: folder, name: file)
                        let done = await eventually {
                            view.done("zoom").count + view.done("zoom-report").count + view.failed("zoom-report").count
                                == index + 1
                        }
                        #expect(done, "\(name): \(file)")
                    }
                    #expect(view.failed("zoom-report").isEmpty && view.failed("zoom").isEmpty)
                }
                var answers: [String] = []
                for meeting in ["93812345678", "973 0329 0176"] {
                    let query = try await Daemon.command(
                        ["query", "zoom", "--spool", spool, "--meeting", meeting, "--json"] + store
                    )
                    #expect(query.status == .exited(0), "\(query.err)")
                    answers.append(query.out)
                }
                return (result.status, answers)
            }
            let lite = try await run("lite", [])
            let site = try await run(
                "site",
                ["--db", server.url("site", role: "carespool"), "--db-password-file", passwordFile]
            )
            #expect(lite.status == .exited(0) && site.status == .exited(0))
            #expect(site.zoom == lite.zoom)
            #expect(site.zoom[0].contains("webhook+report") && site.zoom[1].contains("Łukasz"), "\(site.zoom)")
        }
    }

    @Test func aDatabaseThatCannotBeReachedEndsTheStartWith69AndARefusedLoginWith78() async throws {
        try await PostgresServer.with { server in
            _ = try await server.createDatabase("site", role: "carespool")
            let wrong = try server.passwordFile("wrong-password-7")
            let spool = TempDir("pg-start")
            defer { spool.cleanup() }
            let refused = try await Daemon.command([
                "serve", "--spool", spool.path, "--schema", TestPaths.schemaJSON.path, "--http", "off", "--db",
                server.url("site", role: "carespool"), "--db-password-file", wrong,
            ])
            #expect(refused.status == .exited(78), "\(refused)")
            #expect(refused.err.contains("28P01") && !refused.err.contains("wrong-password-7"), "\(refused.err)")
            let down = try await Daemon.command([
                "serve", "--spool", spool.path, "--schema", TestPaths.schemaJSON.path, "--http", "off", "--db",
                "postgres://carespool@/site?host=\(server.folder)-none", "--db-password-file", wrong,
            ])
            #expect(down.status == .exited(69), "\(down)")
        }
    }
}
