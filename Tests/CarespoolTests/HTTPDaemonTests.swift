import Foundation
import GRDB
import Spool
import Subprocess
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// A TCP port that was free a moment ago on 127.0.0.1.
func freePort() -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
    }
    _ = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
    }
    return Int(UInt16(bigEndian: address.sin_port))
}

/// Runs curl with `arguments` (silent), retrying while the daemon is not listening yet (up to
/// `attempts` times); its stdout.
func curl(_ arguments: [String], attempts: Int = 50) async throws -> String {
    var output = ""
    for _ in 0..<attempts {
        let result = try await Subprocess.run(
            .name("curl"),
            arguments: Arguments(["-s"] + arguments),
            output: .string(limit: 1 << 16),
            error: .discarded
        )
        output = result.standardOutput
        if result.terminationStatus == .exited(0) { return output }
        try await Task.sleep(for: .milliseconds(100))
    }
    return output
}

/// The real binary's HTTP endpoint on a live socket, curl as the sender.
@Suite(.serialized) struct HTTPDaemonTests {
    @Test func webhooksPostedToTheRealDaemonAreSpooledAndStoredLikeDroppedFiles() async throws {
        let dir = TempDir("httpd")
        defer { dir.cleanup() }
        let spool = dir.path + "/spool"
        let port = freePort()
        let run = try await Daemon.serve(spool: spool, arguments: ["--http", "127.0.0.1:\(port)"]) { pid in
            try await waitUntilServing(spool)
            var statuses: [String] = []
            for attempt in 0..<10 {
                statuses.append(
                    try await curl([
                        "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-H", "Content-Type: application/json",
                        "--data-binary", event("H\(attempt)", "2025-01-10T12:30:00Z"),
                        "http://127.0.0.1:\(port)/webhook/appointments",
                    ])
                )
            }
            let view = SpoolView(root: spool)
            let stored = await eventually { view.done().count == 10 }
            let health = try await curl(["http://127.0.0.1:\(port)/health"])
            _ = try await curl(["-o", "/dev/null", "http://127.0.0.1:\(port)/no/such/path"], attempts: 1)
            // A batch's files are counted just after their renames into done/: read again until they are.
            var metrics = ""
            let deadline = ContinuousClock.now + .seconds(20)
            repeat {
                metrics = try await curl(["http://127.0.0.1:\(port)/metrics"])
                if metrics.contains("carespool_files_total{kind=\"appointments\",outcome=\"accepted\"} 10") { break }
                try await Task.sleep(for: .milliseconds(100))
            } while ContinuousClock.now < deadline
            kill(pid, SIGTERM)
            return (statuses, stored, health, metrics)
        }
        #expect(run.result.0 == Array(repeating: "202", count: 10))
        #expect(run.result.1)
        #expect(run.result.2.contains("\"db\":\"up\""))
        // Prometheus text: requests by route and status, files by kind and outcome, the drop→done
        // latency histogram, queue depths.
        let metrics = run.result.3.split(separator: "\n").map(String.init)
        #expect(metrics.contains("carespool_http_requests_total{route=\"/webhook/appointments\",status=\"202\"} 10"))
        #expect(metrics.contains("carespool_http_requests_total{route=\"other\",status=\"404\"} 1"))
        #expect(metrics.contains("carespool_files_total{kind=\"appointments\",outcome=\"accepted\"} 10"))
        #expect(metrics.contains("carespool_file_latency_seconds_count{kind=\"appointments\"} 10"))
        #expect(metrics.contains("carespool_file_latency_seconds_bucket{kind=\"appointments\",le=\"+Inf\"} 10"))
        #expect(metrics.contains("carespool_queue_files{queue=\"inbox\"} 0.0"))
        #expect(metrics.contains("carespool_inbox_oldest_seconds{kind=\"appointments\"} 0.0"))
        #expect(metrics.contains("carespool_database_up 1.0"))
        // The group commits, by phase: one sender waiting for each 202 makes ten groups of one request.
        #expect(metrics.contains("carespool_http_synced_requests_total 10"))
        for phase in ["data", "rename", "directories"] {
            #expect(metrics.contains("carespool_http_sync_seconds_count{phase=\"\(phase)\"} 10"))
            let finestBucket = "carespool_http_sync_seconds_bucket{phase=\"\(phase)\",le=\"0.0005\"} "
            #expect(metrics.contains { $0.hasPrefix(finestBucket) })
        }
        #expect(run.status == .exited(0))
        let events = try await SpoolView(root: spool).database().read { db in
            try Int.fetchOne(db, sql: "SELECT count(*) FROM appointment_events")
        }
        #expect(events == 10)
    }

    @Test func getSpoolIdTellsWhereAPostedRequestIsAndItsVerdictWithoutPayloadValues() async throws {
        let dir = TempDir("httpd")
        defer { dir.cleanup() }
        let spool = dir.path + "/spool"
        let port = freePort()
        let run = try await Daemon.serve(spool: spool, arguments: ["--http", "127.0.0.1:\(port)"]) { pid in
            try await waitUntilServing(spool)
            let url = "http://127.0.0.1:\(port)"
            let post = ["-X", "POST", "-H", "Content-Type: application/json", "--data-binary"]
            let good = try await curl(post + [event("G1", "2025-01-10T12:30:00Z"), url + "/webhook/appointments"])
            let bad = try await curl(
                post + [event("B1", "2025-01-10 12:30", patient: "SECRET-PATIENT"), url + "/webhook/appointments"]
            )
            func id(_ reply: String) -> String {
                (try? JSONSerialization.jsonObject(with: Data(reply.utf8)) as? [String: Any])?["id"] as? String ?? ""
            }
            // A value outside the schema's enum: the sender is told what is allowed, not what it sent.
            let unknown = try await curl(
                post + [event("B2", "2025-01-10T12:30:00Z", type: "SECRET-TYPE"), url + "/webhook/appointments"]
            )
            let view = SpoolView(root: spool)
            _ = await eventually { view.done().count == 1 && view.failed().count == 2 }
            let goodState = try await curl([url + "/spool/" + id(good)])
            let badState = try await curl([url + "/spool/" + id(bad)]) + "\n" + curl([url + "/spool/" + id(unknown)])
            let missing = try await curl([
                "-o", "/dev/null", "-w", "%{http_code}", url + "/spool/01900000-0000-7000-8000-000000000000",
            ])
            // Prefer: wait=N answers as the receiver this replaces: 200 stored, 409 duplicate, 400 invalid.
            let wait = ["-o", "/dev/null", "-w", "%{http_code}", "-H", "Prefer: wait=10"] + post
            let stored = try await curl(wait + [event("W1", "2025-01-10T12:30:00Z"), url + "/webhook/appointments"])
            let duplicate = try await curl(
                wait + [event("W1", "2025-01-10T12:30:00Z") + " ", url + "/webhook/appointments"]
            )
            let invalid = try await curl(wait + [event("W2", "yesterday"), url + "/webhook/appointments"])
            kill(pid, SIGTERM)
            return (goodState, badState, missing, [stored, duplicate, invalid])
        }
        let good = try JSONSerialization.jsonObject(with: Data(run.result.0.utf8)) as? [String: Any]
        #expect(good?["state"] as? String == "done")
        #expect(good?["outcome"] as? String == "accepted")
        let badStates = run.result.1.split(separator: "\n").map(String.init)
        let bad = try JSONSerialization.jsonObject(with: Data(badStates[0].utf8)) as? [String: Any]
        let unknown = try JSONSerialization.jsonObject(with: Data(badStates[1].utf8)) as? [String: Any]
        let unknownErrors = unknown?["errors"] as? [[String: Any]]
        #expect(unknownErrors?.first?["pointer"] as? String == "/event_type")
        #expect(
            unknownErrors?.first?["message"] as? String
                == "\"…\" is not one of \"appointment.scheduled\", \"appointment.cancelled\", \"appointment.updated\""
        )
        #expect(bad?["state"] as? String == "failed")
        #expect(bad?["outcome"] as? String == "rejected")
        let errors = bad?["errors"] as? [[String: Any]]
        #expect(errors?.first?["pointer"] as? String == "/timestamp")
        #expect(errors?.first?["message"] as? String == "\"…\" is not an RFC 3339 date-time")
        #expect(!run.result.1.contains("SECRET") && !run.result.1.contains("12:30"))
        #expect(run.result.2 == "404")
        #expect(run.result.3 == ["200", "409", "400"])
    }

    /// One id end to end: the id a sender is answered (POST) and the one `drop` prints are the ids of
    /// the ledger, `show`, `GET /spool/{id}` and the conflict messages. A file whose id is taken (a
    /// request retried after it was judged) or that the daemon's user did not write gets a fresh one.
    @Test func theIdASenderOrDropGetsIsTheLedgersId() async throws {
        let dir = TempDir("httpid")
        defer { dir.cleanup() }
        let spool = dir.path + "/spool"
        let port = freePort()
        let view = SpoolView(root: spool)
        let run = try await Daemon.serve(spool: spool, arguments: ["--http", "127.0.0.1:\(port)"]) { pid in
            try await waitUntilServing(spool)
            let url = "http://127.0.0.1:\(port)"
            let post = ["-X", "POST", "-H", "Content-Type: application/json", "--data-binary"]
            func id(_ reply: String) -> String {
                (try? JSONSerialization.jsonObject(with: Data(reply.utf8)) as? [String: Any])?["id"] as? String ?? ""
            }
            let first = id(try await curl(post + [event("I1", "2025-01-10T12:30:00Z"), url + "/webhook/appointments"]))
            // Judged before the second is sent: in one scan, two files are taken in no set order.
            _ = await eventually { view.done().count == 1 }
            // The same appointment with another patient: a conflict naming the file that holds the first.
            let second = id(
                try await curl(
                    post + [event("I1", "2025-01-10T12:30:00Z", patient: "P2"), url + "/webhook/appointments"]
                )
            )
            _ = await eventually { view.done().count == 1 && view.failed().count == 1 }
            let staged = dir.path + "/visit.json"
            try event("I2", "2025-01-10T12:30:00Z").write(toFile: staged, atomically: true, encoding: .utf8)
            let dropped = try await HostileNeighbourTests.run([
                Daemon.binary, "drop", "--spool", spool, "--kind", "appointments", staged,
            ])
            _ = await eventually { view.done().count == 2 }
            let shown = try await HostileNeighbourTests.run([Daemon.binary, "show", "--spool", spool, first])
            let state = try await curl([url + "/spool/" + second])
            // The rejected request retried (its id is in the ledger), and a file named like a request
            // written by another user: each claimed under a fresh id.
            let retried = try await HostileNeighbourTests.run([Daemon.binary, "retry", "--spool", spool, second])
            let foreignID = "01a2d000-0000-7000-8000-000000000001"
            let foreign = dir.path + "/\(foreignID).json"
            try event("I3", "2025-01-10T12:30:00Z").write(toFile: foreign, atomically: true, encoding: .utf8)
            _ = try await HostileNeighbourTests.sh(
                "chown 65534 \(foreign) && mv \(foreign) \(spool)/inbox/appointments/"
            )
            _ = await eventually {
                (try? view.database().read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM files") }) == 5
            }
            let ids = try await view.database().read { db in
                try String.fetchAll(db, sql: "SELECT id FROM files ORDER BY received_at")
            }
            kill(pid, SIGTERM)
            return (first, second, dropped.out, shown, state, retried.status, ids, foreignID)
        }
        let (first, second, dropped, shown, state, retried, ids, foreignID) = run.result
        #expect(Spool.isID(first) && Spool.isID(second))
        let droppedID = String(dropped.split(separator: " ").last ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(Spool.isID(droppedID), "\(dropped)")
        #expect(Array(ids.prefix(3)) == [first, second, droppedID], "\(ids)")
        #expect(ids.count == 5)
        #expect(!ids.dropFirst(3).contains(second) && !ids.contains(foreignID))
        #expect(shown.status == .exited(0) && shown.out.contains(first))
        #expect(state.contains("\"id\":\"\(second)\"") && state.contains("\"outcome\":\"rejected\""))
        #expect(state.contains("conflicts with the event stored from file \(first)"), "\(state)")
        #expect(retried == .exited(0))
    }

    /// RFC 9110 §10.1.1 with the real binary on a live socket: a sender that sends `Expect:
    /// 100-continue` (curl for bodies over 1 MiB, .NET Framework for every POST) and waits is answered
    /// `100 Continue` before it sends a byte of its body; one whose request is refused by its head alone
    /// gets the refusal instead, and no 100; an expectation other than 100-continue is a 417.
    @Test func aSenderExpecting100ContinueIsAnsweredBeforeItSendsItsBody() async throws {
        let dir = TempDir("httpexpect")
        defer { dir.cleanup() }
        let spool = dir.path + "/spool"
        let port = freePort()
        let run = try await Daemon.serve(spool: spool, arguments: ["--http", "127.0.0.1:\(port)"]) { pid in
            _ = try await curl(["http://127.0.0.1:\(port)/health"])
            func head(_ fields: String) -> String {
                "POST /webhook/appointments HTTP/1.1\r\nHost: x\r\n\(fields)\r\n"
            }
            let body = event("E1", "2025-01-10T12:30:00Z")
            // The body is sent only once the 100 has arrived (the read waits up to 10 s for it).
            let accepted = try RawConnection(port: port)
            accepted.send(
                head("Content-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\nExpect: 100-continue\r\n")
            )
            let interim = await accepted.readResponse()
            if interim?.hasPrefix("HTTP/1.1 100 Continue\r\n") == true { accepted.send(body) }
            let final = await accepted.readResponse()
            accepted.close()
            // Refused by the head: a declared length over the 1 MiB limit, a wrong content type.
            var refusals: [String?] = []
            for fields in [
                "Content-Type: application/json\r\nContent-Length: 2000000\r\nExpect: 100-continue\r\n",
                "Content-Type: text/plain\r\nContent-Length: 10\r\nExpect: 100-Continue\r\n",
                "Content-Type: application/json\r\nContent-Length: 10\r\nExpect: something-else\r\n",
            ] {
                let connection = try RawConnection(port: port)
                connection.send(head(fields))
                refusals.append(await connection.readResponse())
                connection.close()
            }
            let view = SpoolView(root: spool)
            let stored = await eventually { view.done().count == 1 }
            kill(pid, SIGTERM)
            return (interim, final, refusals, stored)
        }
        let (interim, final, refusals, stored) = run.result
        #expect(interim?.hasPrefix("HTTP/1.1 100 Continue\r\n") == true, "\(interim ?? "nothing")")
        #expect(final?.hasPrefix("HTTP/1.1 202 Accepted\r\n") == true, "\(final ?? "nothing")")
        #expect(stored)
        let expected = ["HTTP/1.1 413 ", "HTTP/1.1 415 ", "HTTP/1.1 417 "]
        for (response, status) in zip(refusals, expected) {
            // The refusal is the first answer: no 100 before it.
            #expect(response?.hasPrefix(status) == true, "\(response ?? "nothing")")
        }
        #expect(run.status == .exited(0))
        let events = try await SpoolView(root: spool).database().read { db in
            try String.fetchAll(db, sql: "SELECT appointment_id FROM appointment_events")
        }
        #expect(events == ["E1"])
    }
}
