import Foundation
import Store
import Subprocess
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The operator commands against a real daemon's spool and database, and the audit trail they leave.
@Suite(.serialized) struct OperatorTests {
    /// Runs a carespool command that prints JSON; its output parsed.
    func json(_ arguments: [String]) async throws -> [String: Any] {
        let result = try await Daemon.command(arguments)
        #expect(result.status == .exited(0), "\(arguments): \(result.err)")
        let parsed = try? JSONSerialization.jsonObject(with: Data(result.out.utf8)) as? [String: Any]
        return try #require(parsed, "\(arguments) printed: \(result.out) \(result.err)")
    }

    /// `status` counts every inbox folder of a kind, a partner's SFTP folder included, and says how long
    /// the oldest file has waited — since it arrived, whatever mtime its sender kept.
    @Test func statusSaysHowLongTheOldestInboxFileHasWaited() async throws {
        let dir = TempDir("operator")
        defer { dir.cleanup() }
        let spool = dir.path + "/spool"
        let partner = dir.path + "/partner"
        for folder in [spool + "/inbox/intake", spool + "/inbox/appointments", spool + "/inbox/zoom", partner] {
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        }
        let config = dir.path + "/carespool.toml"
        try """
        spool = "\(spool)"

        [[inbox]]
        path = "\(partner)"
        kind = "appointments"
        """.write(toFile: config, atomically: true, encoding: .utf8)
        try event("W1", "2025-01-10T12:30:00Z").write(toFile: partner + "/w1.json", atomically: false, encoding: .utf8)
        try FileManager.default.setAttributes(
            [.modificationDate: Date(timeIntervalSince1970: 1_000_000_000)],
            ofItemAtPath: partner + "/w1.json"
        )
        try "mrn\n".write(toFile: spool + "/inbox/intake/p.csv", atomically: false, encoding: .utf8)
        try "x".write(toFile: spool + "/inbox/intake/upload.csv.part", atomically: false, encoding: .utf8)

        let status = try await json(["status", "--config", config, "--json"])
        let inboxes = (status["folders"] as? [[String: Any]] ?? []).filter { $0["folder"] as? String == "inbox" }
        let byKind = Dictionary(uniqueKeysWithValues: inboxes.map { ($0["kind"] as? String ?? "", $0) })
        #expect(byKind["appointments"]?["files"] as? Int == 1)
        #expect(byKind["intake"]?["files"] as? Int == 1)
        #expect(byKind["zoom"]?["files"] as? Int == 0)
        let waited = byKind["appointments"]?["oldest_seconds"] as? Int
        #expect(waited.map { (0..<120).contains($0) } == true, "waited \(String(describing: waited)) s")
        #expect(byKind["zoom"]?["oldest_seconds"] is NSNull)

        let text = try await Daemon.command(["status", "--config", config])
        let waiting = text.out.split(separator: "\n").first { $0.hasPrefix("  waiting") }.map(String.init) ?? ""
        let columns = waiting.split(separator: " ").map(String.init)
        // A column per kind: appointments, zoom, intake, zoom-report.
        #expect(
            columns.count == 5 && columns[1].hasSuffix("s") && columns[2] == "-" && columns[4] == "-",
            "\(text.out)"
        )
    }

    @Test func failedShowRetryDropReportQueriesAndTheAuditTrail() async throws {
        let dir = TempDir("operator")
        defer { dir.cleanup() }
        let spool = dir.path + "/spool"
        let port = freePort()
        let base = ["--spool", spool]
        try "not json".write(toFile: dir.path + "/bad.json", atomically: true, encoding: .utf8)
        try event("OP1", "2025-01-10T12:30:00Z").write(
            toFile: dir.path + "/good.json",
            atomically: true,
            encoding: .utf8
        )
        try intakeCSV(count: 20).write(toFile: dir.path + "/patients.csv", atomically: true, encoding: .utf8)
        let run = try await Daemon.serve(
            spool: spool,
            arguments: [
                "--http", "127.0.0.1:\(port)", "--http-token", "scheduler:s3cret-s3cret-s3cret:*", "--host-name",
                "clinic-é1",
            ]
        ) { pid in
            try await waitUntilServing(spool)
            // Atomic drops for scripts; one bad file among them.
            let dropped = try await Daemon.command(
                ["drop", "--kind", "appointments"] + base + [dir.path + "/bad.json", dir.path + "/good.json"]
            )
            let intake = try await Daemon.command(["drop", "--kind", "intake"] + base + [dir.path + "/patients.csv"])
            let posted = try await curl([
                "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-H", "Content-Type: application/json", "-H",
                "Authorization: Bearer s3cret-s3cret-s3cret", "--data-binary", event("OP2", "2025-01-10T12:30:00Z"),
                "http://127.0.0.1:\(port)/webhook/appointments",
            ])
            let view = SpoolView(root: spool)
            let settled = await eventually {
                view.done().count == 2 && view.failed().count == 1 && view.done("intake").count == 1
            }
            kill(pid, SIGTERM)
            return (dropped.status, intake.status, posted, settled)
        }
        #expect(run.result.0 == .exited(0) && run.result.1 == .exited(0) && run.result.2 == "202" && run.result.3)

        let failed = try await json(["failed", "--json"] + base)
        let files = try #require(failed["files"] as? [[String: Any]])
        #expect(files.count == 1)
        let id = try #require(files.first?["id"] as? String)
        #expect(files.first?["original_name"] as? String == "bad.json")
        #expect((files.first?["errors"] as? [String])?.first?.contains("not valid JSON") == true)
        let table = try await Daemon.command(["failed", "--kind", "appointments"] + base)
        #expect(table.out.contains(id) && table.out.contains("rejected"))

        let shown = try await json(["show", id, "--json"] + base)
        #expect((shown["ledger"] as? [String: Any])?["outcome"] as? String == "rejected")
        // The ledger names the host of each verdict, in one host's SQLite file too.
        #expect((shown["ledger"] as? [String: Any])?["host"] as? String == "clinic-é1")
        #expect(try await Daemon.command(["show", id] + base).out.contains("host       clinic-é1"))
        #expect(
            (shown["paths"] as? [String])?.contains { $0.hasSuffix("/failed/appointments/\(id)--bad.json") } == true
        )
        #expect(try await Daemon.command(["show", "no-such-id"] + base).status == .exited(64))

        let retried = try await json(["retry", id, "--json"] + base)
        #expect(
            (retried["requeued"] as? [[String: Any]])?.first?["path"] as? String == spool
                + "/inbox/appointments/bad.json"
        )
        #expect(FileManager.default.fileExists(atPath: spool + "/inbox/appointments/bad.json"))
        #expect(try await Daemon.command(["retry", "--kind", "appointments", "--all"] + base).status == .exited(0))

        let purge = try await json(["purge", "--done-older-than", "30d", "--dry-run", "--json"] + base)
        #expect(purge["dry_run"] as? Bool == true && (purge["folders"] as? [String])?.isEmpty == true)
        let report = try await json(["report", "--json"] + base)
        let days = try #require(report["days"] as? [[String: Any]])
        let accepted = days.first { $0["kind"] as? String == "appointments" && $0["outcome"] as? String == "accepted" }
        #expect(accepted?["files"] as? Int == 2 && accepted?["stored"] as? Int == 2)

        // Queries, paged like GET /patients?page=&page_size=&mrn=&first_name=&last_name=.
        let patients = try await json(
            ["query", "patients", "--last-name", "last1", "--page-size", "5", "--json"] + base
        )
        #expect(patients["total"] as? Int == 11)  // Last1, Last10…Last19 of the 20 rows, 17 distinct MRNs
        #expect((patients["patients"] as? [[String: Any]])?.count == 5)
        // The replaced ingestion pipeline's shapes, key by key: GET /patients and GET /patients/{id}.
        #expect(Set(patients.keys) == ["total", "page", "page_size", "patients"])
        let one = try await json(["query", "patients", "--mrn", "MRN3", "--json"] + base)
        let patient = try #require((one["patients"] as? [[String: Any]])?.first)
        #expect(Set(patient.keys) == ["id", "mrn", "person", "visits"])
        #expect(patient["mrn"] as? String == "MRN3")
        let person = try #require(patient["person"] as? [String: Any])
        #expect(Set(person.keys) == ["first_name", "last_name", "birth_date"])
        #expect(person.values.allSatisfy { $0 is String })
        let patientVisits = try #require(patient["visits"] as? [[String: Any]])
        #expect(patientVisits.count == 2)  // rows 3 and 10
        for visit in patientVisits {
            #expect(Set(visit.keys) == ["id", "visit_account_number", "visit_date", "reason"])
            #expect(visit["id"] is Int && visit["visit_account_number"] is String && visit["visit_date"] is String)
        }
        let patientID = try #require(patient["id"] as? Int)
        let byID = try await Daemon.command(["query", "patients", "--id", String(patientID)] + base)
        let same = try JSONSerialization.jsonObject(with: Data(byID.out.utf8)) as? [String: Any]
        #expect(same?["mrn"] as? String == "MRN3" && (same?["visits"] as? [Any])?.count == 2, "\(byID.out)")
        #expect(try await Daemon.command(["query", "patients", "--id", "999999"] + base).status == .exited(1))
        let visits = try await json(["query", "visits", "--mrn", "MRN3", "--json"] + base)
        #expect(visits["total"] as? Int == 2)
        let appointments = try await json(["query", "appointments", "--id", "OP2", "--json", "--current"] + base)
        #expect((appointments["appointments"] as? [[String: Any]])?.first?["status"] as? String == "scheduled")
        // The replaced appointment receiver's GET /events: an array of the stored events, key by key.
        let listed = try await Daemon.command(["query", "appointments", "--json"] + base)
        let events = try #require(try JSONSerialization.jsonObject(with: Data(listed.out.utf8)) as? [[String: Any]])
        #expect(Set(events.compactMap { $0["appointment_id"] as? String }) == ["OP1", "OP2"], "\(listed.out)")
        #expect(events.compactMap { $0["id"] as? Int } == events.compactMap { $0["id"] as? Int }.sorted())
        for stored in events {
            #expect(
                Set(stored.keys) == [
                    "id", "event_type", "appointment_id", "patient_id", "timestamp", "notes", "received_at",
                ]
            )
            #expect(stored["id"] is Int && stored["event_type"] as? String == "appointment.scheduled")
            #expect(stored["timestamp"] as? String == "2025-01-10T12:30:00Z" && stored["patient_id"] is String)
            #expect(stored["notes"] is NSNull || stored["notes"] is String)
            #expect((stored["received_at"] as? String)?.hasPrefix("20") == true)
        }
        let byPatient = try await Daemon.command(["query", "appointments", "--events", "--id", "OP2"] + base)
        #expect(byPatient.out.contains("OP2") && !byPatient.out.contains("OP1") && byPatient.out.contains("1 of 1"))

        // The audit trail: file outcomes with their senders, operator actions with the Unix user.
        let audit = try await json(["audit", "--json"] + base)
        let rows = try #require(audit["audit"] as? [[String: Any]])
        let me = String(cString: getpwuid(getuid())!.pointee.pw_name)
        func has(_ action: String, _ actor: String) -> Bool {
            rows.contains { $0["action"] as? String == action && $0["actor"] as? String == actor }
        }
        #expect(has("file.accepted", "http:scheduler"), "\(rows)")
        #expect(has("file.accepted", me))
        #expect(has("file.rejected", me))
        #expect(has("drop", me) && has("retry", me) && has("query.patients", me) && has("query.visits", me))
        let query = rows.first { $0["action"] as? String == "query.patients" && $0["target"] as? String == "mrn=MRN3" }
        #expect(query != nil)
    }
}

/// Paging arithmetic is checked (issue 16, finding 7): a page so far out that its offset overflows is an
/// empty page, never a trap (`query patients --page 9223372036854775807` died on an overflow).
@Suite struct PagingTests {
    /// An operator runs `drop` through sudo as the daemon's user: a path would be opened with that user's
    /// rights (and a secret only it may read copied into failed/, where operators read). Under sudo the
    /// file comes on standard input, opened by the operator's own shell; a path is refused.
    @Test func underSudoDropReadsOnlyStandardInputOpenedWithTheOperatorsRights() async throws {
        let dir = TempDir("drop-sudo")
        defer { dir.cleanup() }
        let spool = dir.path + "/spool"
        for folder in ["/tmp", "/inbox/appointments"] {
            try FileManager.default.createDirectory(atPath: spool + folder, withIntermediateDirectories: true)
        }
        let secret = dir.file("secret-token")
        try "SECRET-SECRET-SECRET".write(toFile: secret, atomically: true, encoding: .utf8)
        try event("SU1", "2025-01-10T12:30:00Z").write(toFile: dir.file("mine.json"), atomically: true, encoding: .utf8)
        func sh(_ script: String) async throws -> (status: TerminationStatus, out: String, err: String) {
            try await Daemon.command(["-c", script], executable: "/bin/sh")
        }
        let me = getuid()
        let refused = try await sh(
            "SUDO_UID=\(me + 4242) SUDO_USER=op '\(Daemon.binary)' drop --kind appointments --spool '\(spool)' '\(secret)'"
        )
        #expect(refused.status != .exited(0))
        #expect(refused.err.contains("under sudo, drop reads its file from standard input"), "\(refused.err)")
        #expect(SpoolView(root: spool).names("inbox/appointments").isEmpty)
        let piped = try await sh(
            "SUDO_UID=\(me + 4242) SUDO_USER=op '\(Daemon.binary)' drop --kind appointments --spool '\(spool)' "
                + "--name mine.json - < '\(dir.file("mine.json"))'"
        )
        #expect(piped.status == .exited(0), "\(piped.err)")
        let dropped = try String(contentsOfFile: spool + "/inbox/appointments/mine.json", encoding: .utf8)
        #expect(dropped == event("SU1", "2025-01-10T12:30:00Z"))
        // Not under sudo, a path is read as before; - needs its name.
        let plain = try await sh("'\(Daemon.binary)' drop --kind appointments --spool '\(spool)' '\(secret)'")
        #expect(plain.status == .exited(0), "\(plain.err)")
        let unnamed = try await sh("'\(Daemon.binary)' drop --kind appointments --spool '\(spool)' - < /dev/null")
        #expect(unnamed.err.contains("needs --name NAME"), "\(unnamed.err)")
    }

    @Test func anOffsetThatWouldOverflowIsPastEveryRow() {
        #expect(AppDatabase.offset(page: 1, pageSize: 50) == 0)
        #expect(AppDatabase.offset(page: 3, pageSize: 50) == 100)
        #expect(AppDatabase.offset(page: 0, pageSize: 50) == 0)
        #expect(AppDatabase.offset(page: Int.max, pageSize: 1_000) == Int.max)
        #expect(AppDatabase.offset(page: Int.max, pageSize: 1) == Int.max - 1)
    }

    @Test func theLastPossiblePageIsAnEmptyPage() async throws {
        let dir = TempDir("paging")
        defer { dir.cleanup() }
        let spool = dir.path + "/spool"
        try FileManager.default.createDirectory(atPath: spool, withIntermediateDirectories: true)
        let database = try AppDatabase.open(path: spool + "/carespool.sqlite3")
        let direct = try database.patients(mrn: nil, firstName: nil, lastName: nil, page: .max, pageSize: 1_000)
        #expect(direct.rows.isEmpty && direct.total == 0)
        #expect(try database.visits(mrn: nil, page: .max, pageSize: 1_000).rows.isEmpty)
        #expect(try database.appointments(id: nil, patient: nil, page: .max, pageSize: 1_000).rows.isEmpty)
        #expect(try database.appointmentEvents(id: nil, patient: nil, page: .max, pageSize: 1_000).rows.isEmpty)
        for query in ["patients", "visits", "appointments"] {
            for size in ["1", "1000"] {
                let result = try await Daemon.command(
                    [
                        "query", query, "--spool", spool, "--page", "9223372036854775807", "--page-size", size,
                        "--json",
                    ] + (query == "appointments" ? ["--current"] : [])
                )
                #expect(result.status == .exited(0), "\(query) \(size): \(result.err)")
                let parsed = try? JSONSerialization.jsonObject(with: Data(result.out.utf8)) as? [String: Any]
                #expect((parsed?[query] as? [Any])?.isEmpty == true, "\(result.out)")
                #expect(result.out.contains("\"page\":9223372036854775807"), "\(result.out)")
            }
        }
        let events = try await Daemon.command([
            "query", "appointments", "--spool", spool, "--page", "9223372036854775807", "--json",
        ])
        #expect(events.status == .exited(0) && events.out == "[]\n", "\(events.out)")
    }
}
