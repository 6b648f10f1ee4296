import Foundation
import GRDB
import Subprocess
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The real `carespool serve` binary on a temporary spool: real inotify, real SQLite file, real renames.
@Suite(.serialized) struct DaemonTests {
    /// Values that must never reach a log line (I5).
    static let secrets = ["PATIENT-7fz9", "Allergic to penicillin", "2031-05-06T07:08:09Z", "secret-name"]

    @Test func rsyncStyleDropsEndInDoneAndTheDatabaseAndSigtermExitsZero() async throws {
        let dir = TempDir("daemon")
        defer { dir.cleanup() }
        let spool = dir.path + "/spool"
        let view = SpoolView(root: spool)
        let run = try await Daemon.serve(spool: spool) { pid in
            let view = SpoolView(root: spool)
            try await waitUntilServing(spool)
            for n in 0..<20 {
                let text = event(
                    "A\(n)",
                    "2031-05-06T07:08:09Z",
                    patient: "PATIENT-7fz9",
                    notes: "Allergic to penicillin"
                )
                try dropLikeRsync(text, into: spool + "/inbox/appointments", name: "secret-name-\(n).json")
            }
            let bad =
                event("B", "2025-01-10 12:30", patient: "PATIENT-7fz9") + "\n" + event("C", "2031-05-06T07:08:09Z")
            try dropLikeRsync(bad, into: spool + "/inbox/appointments", name: "secret-name-bad.ndjson")
            let finished = await eventually { view.done().count == 21 }
            kill(pid, SIGTERM)
            return finished
        }
        #expect(run.result)
        #expect(run.status == .exited(0))
        #expect(view.inbox().isEmpty)
        #expect(view.processing().isEmpty)
        #expect(Set(view.done().map(SpoolView.original)).count == 21)
        #expect(view.sidecars().count == 2)
        let rejected = try #require(view.sidecars().first { $0.hasSuffix(".rejected.ndjson") })
        let rejectedText = try String(contentsOfFile: spool + "/failed/appointments/" + rejected, encoding: .utf8)
        #expect(rejectedText.contains("\"appointment_id\":\"B\""))
        #expect(rejectedText.split(separator: "\n").count == 1)
        let errorJSON = try String(
            contentsOfFile: spool + "/failed/appointments/"
                + rejected.replacingOccurrences(of: ".rejected.ndjson", with: ".error.json"),
            encoding: .utf8
        )
        #expect(errorJSON.contains("\"pointer\":\"/timestamp\""))
        #expect(errorJSON.contains("\"outcome\":\"partial\""))
        let database = try view.database()
        let counts = try await database.read { db in
            (
                try Int.fetchOne(db, sql: "SELECT count(*) FROM appointment_events")!,
                try Int.fetchOne(db, sql: "SELECT count(*) FROM files WHERE outcome = 'accepted'")!,
                try Int.fetchOne(db, sql: "SELECT count(*) FROM files WHERE outcome = 'partial'")!
            )
        }
        #expect(counts == (21, 20, 1))
        // One log line per file, with ids, outcomes, counts and timings; never a value or a name (I5).
        let lines = run.log.split(separator: "\n").filter { $0.contains("file finished") }
        #expect(lines.count == 21)
        #expect(lines.allSatisfy { $0.contains("file.id=") && $0.contains("file.outcome=") && $0.contains("file.ms=") })
        for secret in Self.secrets {
            #expect(!run.log.contains(secret), "log carries \(secret)")
        }
    }

    /// Files already in the inbox at start (found by the scan, not by an event) whose mtimes are far in
    /// the future — the year 5138 trapped the daemon at every scan; an hour ahead (a sender's clock, kept
    /// by `rsync -t`) kept a file waiting until then. Both settle by the daemon's own clock and are stored.
    @Test func filesWithMtimesInTheFutureAreClaimedOnceSettled() async throws {
        let dir = TempDir("future")
        defer { dir.cleanup() }
        let spool = dir.path + "/spool"
        let inbox = spool + "/inbox/appointments"
        try FileManager.default.createDirectory(atPath: inbox, withIntermediateDirectories: true)
        let now = Int(time(nil))
        for (name, seconds) in [("year5138.json", 100_000_000_000), ("hour-ahead.json", now + 3_600)] {
            let path = inbox + "/" + name
            try Data(event(name, "2025-03-01T10:00:00Z").utf8).write(to: URL(fileURLWithPath: path))
            try FileManager.default.setAttributes(
                [.modificationDate: Date(timeIntervalSince1970: TimeInterval(seconds))],
                ofItemAtPath: path
            )
        }
        let view = SpoolView(root: spool)
        let run = try await Daemon.serve(spool: spool, arguments: ["--settle-ms", "200", "--rescan-ms", "300"]) { pid in
            let done = await eventually(timeout: .seconds(60)) { view.done().count == 2 }
            kill(pid, SIGTERM)
            return done
        }
        #expect(run.result, "done: \(view.done()), inbox: \(view.inbox())")
        #expect(run.status == .exited(0), "\(run.log.suffix(2_000))")
    }

    @Test func aSlowWriterInPlaceIsClaimedOnlyWhenComplete() async throws {
        let dir = TempDir("daemon")
        defer { dir.cleanup() }
        let spool = dir.path + "/spool"
        let view = SpoolView(root: spool)
        let events = (0..<12).map { event("S\($0)", "2025-01-10T12:30:00Z") }
        let run = try await Daemon.serve(spool: spool, arguments: ["--settle-ms", "1000"]) { pid in
            let view = SpoolView(root: spool)
            try await waitUntilServing(spool)
            // Written in place, as an SFTP server writes a client's upload: chunks over ~3 s, then closed —
            // and half-way through the client stalls for three times the settle interval: still open, so
            // still not claimed.
            let fd = open(spool + "/inbox/appointments/slow.ndjson", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
            #expect(fd >= 0)
            for (index, line) in events.enumerated() {
                let bytes = Array((line + "\n").utf8)
                let half = bytes.count / 2
                _ = bytes[..<half].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
                try await Task.sleep(for: .milliseconds(index == 6 ? 3_000 : 120))
                _ = bytes[half...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
                try await Task.sleep(for: .milliseconds(120))
                #expect(view.done().isEmpty && view.failed().isEmpty, "claimed while being written")
            }
            close(fd)
            let finished = await eventually { view.done().count == 1 }
            kill(pid, SIGTERM)
            return finished
        }
        #expect(run.result)
        #expect(run.status == .exited(0))
        #expect(view.sidecars().isEmpty)
        let stored = try await view.database().read { db in try Int.fetchOne(db, sql: "SELECT stored FROM files") }
        #expect(stored == 12)
    }

    /// A writer that never closes cannot hold a file for ever: once unchanged for `--open-hold-ms`, it is
    /// claimed, with a warning.
    @Test func aFileHeldOpenButUnchangedIsClaimedAfterTheOpenHold() async throws {
        let dir = TempDir("daemon")
        defer { dir.cleanup() }
        let spool = dir.path + "/spool"
        let view = SpoolView(root: spool)
        let line = event("H1", "2025-01-10T12:30:00Z") + "\n"
        let run = try await Daemon.serve(spool: spool, arguments: ["--settle-ms", "200", "--open-hold-ms", "3000"]) {
            pid in
            try await waitUntilServing(spool)
            let opened = ContinuousClock.now  // before the write: the hold counts from the last change
            let fd = open(spool + "/inbox/appointments/forgotten.ndjson", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
            #expect(fd >= 0)
            defer { close(fd) }
            #expect(write(fd, line, line.utf8.count) == line.utf8.count)
            // Settled many times over, but open: not claimed before the hold has passed. Looked at every
            // 50 ms; the look that first finds the inbox empty ends after the claim, so with the hold kept
            // it ends 3 s or more after the write — however late this task is scheduled on a busy machine
            // (a look that merely came late proves nothing either way, and cannot fail the test).
            var seenGone: Duration?
            while seenGone == nil && ContinuousClock.now - opened < .seconds(20) {
                if view.inbox().isEmpty {
                    seenGone = ContinuousClock.now - opened
                } else {
                    try await Task.sleep(for: .milliseconds(50))
                }
            }
            let claimed = await eventually { view.done().count == 1 }
            kill(pid, SIGTERM)
            return (seenGone, claimed)
        }
        let (seenGone, claimed) = run.result
        let gone = try #require(seenGone, "never claimed")
        #expect(gone >= .seconds(3), "claimed \(gone) after the write, before the 3 s hold")
        #expect(claimed)
        #expect(run.status == .exited(0))
        #expect(run.log.contains("file settled but still open by its writer: waiting for the close"))
        // The daemon's own measure of how long the file held still before it was claimed.
        let warning = try #require(
            run.log.split(separator: "\n").first {
                $0.contains("file still open by its writer claimed after holding still")
            },
            "\(run.log.suffix(2_000))"
        )
        let held = warning.split(separator: " ").first { $0.hasPrefix("held.ms=") }.flatMap { Int($0.dropFirst(8)) }
        #expect((held ?? 0) >= 3_000, "\(warning)")
        let stored = try await view.database().read { db in try Int.fetchOne(db, sql: "SELECT stored FROM files") }
        #expect(stored == 1)
    }

    @Test func anSftpRenameByLinkAndUnlinkIsClaimedAfterItSettles() async throws {
        let dir = TempDir("daemon")
        defer { dir.cleanup() }
        let spool = dir.path + "/spool"
        let view = SpoolView(root: spool)
        let run = try await Daemon.serve(spool: spool) { pid in
            let view = SpoolView(root: spool)
            try await waitUntilServing(spool)
            let inbox = spool + "/inbox/appointments"
            try Data(event("L", "2025-01-10T12:30:00Z").utf8).write(
                to: URL(fileURLWithPath: inbox + "/up.json.filepart")
            )
            try await Task.sleep(for: .milliseconds(400))
            #expect(view.done().isEmpty, "a .filepart name was claimed")
            #expect(link(inbox + "/up.json.filepart", inbox + "/up.json") == 0)
            #expect(unlink(inbox + "/up.json.filepart") == 0)
            let finished = await eventually { view.done().count == 1 }
            kill(pid, SIGTERM)
            return finished
        }
        #expect(run.result)
        #expect(view.done().map(SpoolView.original) == ["up.json"])
    }

    @Test func whatIsNotARegularFileGoesToFailedUnread() async throws {
        let dir = TempDir("daemon")
        defer { dir.cleanup() }
        let spool = dir.path + "/spool"
        let view = SpoolView(root: spool)
        let target = dir.file("target.json")
        try Data(event("T", "2025-01-10T12:30:00Z").utf8).write(to: URL(fileURLWithPath: target))
        let run = try await Daemon.serve(spool: spool) { pid in
            let view = SpoolView(root: spool)
            try await waitUntilServing(spool)
            let inbox = spool + "/inbox/appointments"
            #expect(symlink(target, inbox + "/link.json") == 0)
            #expect(mkfifo(inbox + "/pipe.json", 0o644) == 0)
            #expect(mkdir(inbox + "/folder.json", 0o755) == 0)
            try dropLikeRsync(event("G", "2025-01-10T12:30:00Z"), into: inbox, name: "good.json")
            let finished = await eventually { view.failed().count == 3 && view.done().count == 1 }
            kill(pid, SIGTERM)
            return finished
        }
        #expect(run.result)
        #expect(run.status == .exited(0))
        #expect(Set(view.failed().map(SpoolView.original)) == ["link.json", "pipe.json", "folder.json"])
        for name in view.failed() {
            let report = try String(
                contentsOfFile: spool + "/failed/appointments/" + name + ".error.json",
                encoding: .utf8
            )
            #expect(report.contains("not a regular file"), "\(name)")
        }
        let stored = try await view.database().read { db in
            try Int.fetchOne(db, sql: "SELECT count(*) FROM appointment_events WHERE appointment_id = 'T'")
        }
        #expect(stored == 0)
    }

    @Test func atStartFilesLeftInProcessingAreFinishedFromTheLedgerOrProcessedAgain() async throws {
        let dir = TempDir("daemon")
        defer { dir.cleanup() }
        let spool = dir.path + "/spool"
        let view = SpoolView(root: spool)
        // First run: one file is processed to done/.
        _ = try await Daemon.serve(spool: spool) { pid in
            let view = SpoolView(root: spool)
            try await waitUntilServing(spool)
            try dropLikeRsync(event("R1", "2025-01-10T12:30:00Z"), into: spool + "/inbox/appointments", name: "r1.json")
            _ = await eventually { view.done().count == 1 }
            kill(pid, SIGTERM)
        }
        // As if it crashed after its commit but before its rename: put it back into processing/.
        let doneName = try #require(view.done().first)
        let day = try #require(view.names("done/appointments").first)
        #expect(
            rename("\(spool)/done/appointments/\(day)/\(doneName)", "\(spool)/processing/appointments/\(doneName)") == 0
        )
        // And as if it crashed right after a claim: a file in processing/ with no ledger row.
        try Data(event("R2", "2025-01-10T12:30:00Z").utf8).write(
            to: URL(fileURLWithPath: spool + "/processing/appointments/01900000-0000-7000-8000-000000000001--r2.json")
        )
        let second = try await Daemon.serve(spool: spool) { pid in
            let view = SpoolView(root: spool)
            let finished = await eventually { view.done().count == 2 && view.processing().isEmpty }
            kill(pid, SIGTERM)
            return finished
        }
        #expect(second.result)
        #expect(view.done().map(SpoolView.original).sorted() == ["r1.json", "r2.json"])
        let rows = try await view.database().read { db in
            (
                try Int.fetchOne(db, sql: "SELECT count(*) FROM files")!,
                try Int.fetchOne(db, sql: "SELECT count(*) FROM appointment_events")!
            )
        }
        #expect(rows == (2, 2))
    }

    @Test func aLockedDatabaseIsTransientTroubleTheFileWaitsInProcessingAndIsRetried() async throws {
        let dir = TempDir("daemon")
        defer { dir.cleanup() }
        let spool = dir.path + "/spool"
        let run = try await Daemon.serve(spool: spool, arguments: ["--busy-timeout-ms", "200"]) { pid in
            let view = SpoolView(root: spool)
            try await waitUntilServing(spool)
            // An operator's sqlite3 session holds the write lock until the test lets it go (not for a fixed
            // time: on a busy machine the daemon might otherwise only look after the lock is gone).
            let database = spool + "/carespool.sqlite3"
            let (locked, release) = (dir.path + "/locked", dir.path + "/release")
            let operatorSession = Task {
                try await Subprocess.run(
                    .name("sqlite3"),
                    arguments: [
                        database, "BEGIN EXCLUSIVE;", ".shell touch '\(locked)'",
                        ".shell while [ ! -e '\(release)' ]; do sleep 0.05; done", "COMMIT;",
                    ],
                    output: .discarded,
                    error: .string(limit: 1 << 16)
                )
            }
            #expect(await eventually { FileManager.default.fileExists(atPath: locked) }, "sqlite3 never took the lock")
            try dropLikeRsync(event("K", "2025-01-10T12:30:00Z"), into: spool + "/inbox/appointments", name: "k.json")
            let waiting = await eventually {
                let state = (try? String(contentsOfFile: spool + "/processing/retrying.json", encoding: .utf8)) ?? ""
                return state.contains("SQLite error 5") && view.processing().count == 1
            }
            let status = try await Daemon.command(["status", "--spool", spool])
            #expect(view.failed().isEmpty && view.done().isEmpty)
            #expect(FileManager.default.createFile(atPath: release, contents: nil))
            let session = try await operatorSession.value
            #expect(session.terminationStatus == .exited(0), "\(session.standardError)")
            let finished = await eventually { view.done().count == 1 && view.processing().isEmpty }
            kill(pid, SIGTERM)
            return (waiting, status.out, finished)
        }
        #expect(run.result.0, "the file did not wait in processing/ with its error")
        #expect(run.result.1.contains("retrying: [{\"id\":"), "\(run.result.1)")
        #expect(run.result.1.contains("database is locked"), "\(run.result.1)")
        #expect(run.result.2)
        #expect(run.status == .exited(0))
        #expect(run.log.contains("transient trouble, file stays in processing"))
    }

    @Test func aSchemaWithAnUnsupportedKeywordIsRefusedAtStartNamingIt() async throws {
        let dir = TempDir("daemon")
        defer { dir.cleanup() }
        let schema = dir.file("schema.json")
        let text = try String(contentsOf: TestPaths.schemaJSON, encoding: .utf8)
            .replacingOccurrences(of: "\"minLength\": 1,", with: "\"minLength\": 1, \"uniqueItems\": true,")
        try Data(text.utf8).write(to: URL(fileURLWithPath: schema))
        let result = try await Daemon.command(["serve", "--spool", dir.path + "/spool", "--schema", schema])
        #expect(result.status != .exited(0))
        #expect(result.err.contains("keyword \"uniqueItems\" is not supported"), "\(result.err)")
        #expect(result.err.contains("/$defs/id64/uniqueItems"), "\(result.err)")
    }

    @Test func statusValidateAndRetryCommands() async throws {
        let dir = TempDir("daemon")
        defer { dir.cleanup() }
        let spool = dir.path + "/spool"
        let view = SpoolView(root: spool)
        let bad = dir.file("bad.ndjson")
        try Data((event("V1", "2025-01-10T12:30:00Z") + "\n" + event("V2", "2025-01-10 12:30")).utf8)
            .write(to: URL(fileURLWithPath: bad))
        // validate: a dry run that writes nothing.
        let validate = try await Daemon.command([
            "validate", "--kind", "appointments", "--json", "--schema", TestPaths.schemaJSON.path, bad,
        ])
        #expect(validate.status == .exited(1))
        let report = try JSONSerialization.jsonObject(with: Data(validate.out.utf8)) as? [String: Any]
        #expect(report?["outcome"] as? String == "partial")
        #expect((report?["counts"] as? [String: Int]) == ["stored": 1, "duplicates": 0, "rejected": 1])
        let errors = report?["errors"] as? [[String: Any]]
        #expect(errors?.count == 1)
        #expect(errors?.first?["record"] as? Int == 2)
        #expect(errors?.first?["line"] as? Int == 2)
        #expect(errors?.first?["pointer"] as? String == "/timestamp")
        #expect(errors?.first?["message"] as? String == "\"2025-01-10 12:30\" is not an RFC 3339 date-time")
        #expect(!FileManager.default.fileExists(atPath: spool))

        // A rejected file, then status, then retry after the partner's fix.
        let run = try await Daemon.serve(spool: spool) { pid in
            let view = SpoolView(root: spool)
            try await waitUntilServing(spool)
            try dropLikeRsync("{\"event_type\":", into: spool + "/inbox/appointments", name: "broken.json")
            let failed = await eventually { view.failed().count == 1 }
            let status = try await Daemon.command(["status", "--spool", spool, "--json"])
            let failedName = view.failed().first ?? ""
            let id = String(failedName.prefix(36))
            // The operator fixes the file in place and requeues it.
            try Data(event("F", "2025-01-10T12:30:00Z").utf8).write(
                to: URL(fileURLWithPath: spool + "/failed/appointments/" + failedName)
            )
            let retry = try await Daemon.command(["retry", "--spool", spool, id])
            let redone = await eventually { view.done().count == 1 }
            kill(pid, SIGTERM)
            return (failed, status, retry, redone)
        }
        #expect(run.result.0)
        let status = try JSONSerialization.jsonObject(with: Data(run.result.1.out.utf8)) as? [String: Any]
        let failures = status?["last_failures"] as? [[String: Any]]
        #expect(failures?.count == 1)
        #expect(failures?.first?["outcome"] as? String == "rejected")
        #expect((failures?.first?["error"] as? String)?.contains("not valid JSON") == true)
        let folders = status?["folders"] as? [[String: Any]]
        #expect(folders?.contains { $0["folder"] as? String == "failed" && $0["files"] as? Int == 1 } == true)
        #expect(run.result.2.status == .exited(0), "\(run.result.2.err)")
        #expect(run.result.3)
        #expect(view.failed().isEmpty && view.sidecars().isEmpty)
    }
}

/// Every file in ../shared/testdata/zoom/ through the real daemon.
@Suite(.serialized) struct ZoomDaemonTests {
    /// What each outside file is, and so how it must finish.
    static func expectation(_ path: String) -> (outcome: String, stored: Int, pointer: String?) {
        if path.hasPrefix("illustrative-agent-skills/") { return ("rejected", 0, "/event_ts") }  // no event_ts
        if path.hasSuffix("request-headers.json") || path.hasSuffix("url_validation.response.json")
            || path == "signature-vectors.json"
        {
            return ("rejected", 0, "/event")  // not Zoom events at all
        }
        if path.contains("url_validation") { return ("accepted", 0, nil) }  // skipped with a note
        return ("accepted", 1, nil)
    }

    @Test func everyZoomTestdataFileIngestsAndReplaysAreDuplicates() async throws {
        let dir = TempDir("zoomd")
        defer { dir.cleanup() }
        let spool = dir.path + "/spool"
        let root = TestPaths.testdata.appendingPathComponent("zoom").path
        let files = try FileManager.default.subpathsOfDirectory(atPath: root)
            .filter { $0.hasSuffix(".json") || $0.hasSuffix(".body") }.sorted()
        #expect(files.count == 21)
        let names = files.map { $0.replacingOccurrences(of: "/", with: "__") }
        let run = try await Daemon.serve(spool: spool) { pid in
            let view = SpoolView(root: spool)
            try await waitUntilServing(spool)
            for (file, name) in zip(files, names) {
                let text = try String(contentsOfFile: root + "/" + file, encoding: .utf8)
                try dropLikeRsync(text, into: spool + "/inbox/zoom", name: name)
            }
            let first = await eventually { view.done("zoom").count + view.failed("zoom").count == files.count }
            // Replays of the meeting.started deliveries under new names: duplicates.
            for (file, name) in zip(files, names) where file.contains("captured-kancl/1-") {
                let text = try String(contentsOfFile: root + "/" + file, encoding: .utf8)
                try dropLikeRsync(text + "\n", into: spool + "/inbox/zoom", name: "replay-" + name)
            }
            let second = await eventually { view.done("zoom").count + view.failed("zoom").count == files.count + 1 }
            let status = try await Daemon.command(["status", "--spool", spool, "--json"])
            let query = try await Daemon.command([
                "query", "zoom", "--spool", spool, "--meeting", "86431910364", "--json",
            ])
            kill(pid, SIGTERM)
            return (first && second, status.out, query.out)
        }
        #expect(run.result.0)
        #expect(run.status == .exited(0))
        let rows = try await SpoolView(root: spool).database().read { db in
            try Row.fetchAll(
                db,
                sql: "SELECT original_name, outcome, stored, duplicates, report FROM files WHERE kind = 'zoom'"
            )
        }
        for (file, name) in zip(files, names) {
            let expected = Self.expectation(file)
            let row = try #require(rows.first { ($0["original_name"] as String) == name }, "\(file)")
            #expect(row["outcome"] == expected.outcome, "\(file)")
            #expect(row["stored"] == expected.stored, "\(file)")
            if let pointer = expected.pointer {
                #expect((row["report"] as String).contains("\"pointer\":\"\(pointer)\""), "\(file)")
            }
        }
        let replay = try #require(rows.first { ($0["original_name"] as String).hasPrefix("replay-") })
        #expect(replay["outcome"] == "duplicate")
        #expect(replay["duplicates"] == 1)
        // The non-ASCII topic is stored byte for byte as delivered.
        let raw = try await SpoolView(root: spool).database().read { db in
            try String.fetchOne(db, sql: "SELECT raw_json FROM zoom_events WHERE meeting_id = '85393847045'")
        }
        let body = try String(
            contentsOfFile: root + "/signature-bodies/zoomnet-meeting.started-nonascii.body",
            encoding: .utf8
        )
        #expect(raw == body)
        #expect(run.result.1.contains("\"zoom_events\":{\"received\":"))
        let query = try JSONSerialization.jsonObject(with: Data(run.result.2.utf8)) as? [String: Any]
        let visit = (query?["visits"] as? [[String: Any]])?.first
        #expect(visit?["duration_seconds"] as? Int == 13)
        #expect((visit?["participants"] as? [[String: Any]])?.count == 1)
    }
}
