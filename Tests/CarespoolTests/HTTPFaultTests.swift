import Foundation
import GRDB
import HTTPTypes
import HummingbirdTesting
import NIOCore
import Subprocess
import Synchronization
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// A plain TCP connection to 127.0.0.1:`port` with a receive timeout: the slow client's side.
struct RawConnection {
    let fd: Int32

    init(port: Int, receiveTimeout seconds: Int = 10) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard connected == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        var timeout = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    func send(_ text: String) {
        _ = text.utf8CString.withUnsafeBufferPointer { Glibc.send(fd, $0.baseAddress, $0.count - 1, 0) }
    }

    /// Everything the server sends until it closes the connection (or the receive timeout passes:
    /// then `closed` is false). The blocking reads run on a thread of their own (`offThePool`).
    func readUntilClosed() async -> (text: String, closed: Bool) {
        await offThePool { blockingReadUntilClosed() }
    }

    /// One response: its head, and as many body bytes as its Content-Length says; nil when nothing
    /// complete arrived before the receive timeout or the close.
    func readResponse() async -> String? {
        await offThePool { blockingReadResponse() }
    }

    private func blockingReadUntilClosed() -> (text: String, closed: Bool) {
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n == 0 { return (String(decoding: received, as: UTF8.self), true) }
            if n < 0 { return (String(decoding: received, as: UTF8.self), errno == ECONNRESET) }
            received += buffer[..<n]
        }
    }

    private func blockingReadResponse() -> String? {
        var received: [UInt8] = []
        var byte: UInt8 = 0
        while !received.suffix(4).elementsEqual("\r\n\r\n".utf8) {
            guard recv(fd, &byte, 1, 0) == 1 else { return nil }
            received.append(byte)
        }
        let head = String(decoding: received, as: UTF8.self)
        let length =
            head.split(separator: "\r\n").first { $0.lowercased().hasPrefix("content-length:") }
            .flatMap { Int($0.dropFirst(15).trimmingCharacters(in: .whitespaces)) } ?? 0
        for _ in 0..<length {
            guard recv(fd, &byte, 1, 0) == 1 else { return nil }
            received.append(byte)
        }
        return String(decoding: received, as: UTF8.self)
    }

    func close() { _ = Glibc.close(fd) }
}

/// Runs blocking `work` (a read that waits seconds for a slow server's answer) on a thread of its own.
/// Swift Testing runs tests in parallel on the cooperative pool, which has one thread per core — two
/// here: a test blocked in recv() on one of them stalls every other test's tasks for that long, and a
/// test that times something (a file held open for 3 s) then sees its clock jump.
func offThePool<T: Sendable>(_ work: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
        Thread { continuation.resume(returning: work()) }.start()
    }
}

/// Connections waiting in the accept queue of the socket listening on 127.0.0.1:`port`: the `rx_queue`
/// of its LISTEN line in /proc/net/tcp (nil when there is none).
func acceptQueue(port: Int) -> Int? {
    guard let table = try? String(contentsOfFile: "/proc/net/tcp", encoding: .utf8) else { return nil }
    let local = String(format: "0100007F:%04X", port)
    for line in table.split(separator: "\n").dropFirst() {
        let fields = line.split(separator: " ")
        // sl, local_address, rem_address, st, tx_queue:rx_queue, …; st 0A is LISTEN.
        guard fields.count > 4, fields[1] == local, fields[3] == "0A" else { continue }
        return fields[4].split(separator: ":").last.flatMap { Int($0, radix: 16) }
    }
    return nil
}

/// A counter tasks share.
final class Counter: Sendable {
    let value = Atomic<Int>(0)
}

/// The HTTP endpoint of the real binary under faults: kill -9 mid-burst, slow clients, a full disk.
@Suite(.serialized) struct HTTPFaultTests {
    /// DESIGN.md I2 and I4 over HTTP: kill -9 while requests are in flight, a restart; every request
    /// that got a 202 is processed and stored exactly once.
    ///
    /// The load is 64 senders that each post one request after another until the daemon is gone, so at
    /// the kill every sender has a request outstanding, whatever the machine's speed. (One burst of
    /// 1,000 requests, killed once the client had counted 50 of its 202s, did not prove that on a busy
    /// machine: the client lagged so far behind the server that all 1,000 had been answered by then.)
    @Test func killMinus9MidBurstLosesNo202AndStoresNothingTwice() async throws {
        let dir = TempDir("httpkill")
        defer { dir.cleanup() }
        let spool = dir.path + "/spool"
        let port = freePort()
        let senders = 64
        let run = try await Daemon.serve(spool: spool, arguments: ["--http", "127.0.0.1:\(port)"]) { pid in
            _ = try await curl(["http://127.0.0.1:\(port)/health"])
            let accepted = Counter()
            let killed = Counter()
            let stopped = Counter()
            // Each sender's outcome: the ids of its 202s by key, and how many of its requests failed.
            return try await withThrowingTaskGroup(of: ([String: String], Int).self) { group in
                for sender in 0..<senders {
                    group.addTask {
                        defer { stopped.value.add(1, ordering: .relaxed) }
                        var ids: [String: String] = [:]
                        // A sender stops at its first failure: the daemon is gone (or 500 requests
                        // passed, should the kill never come; the test then fails on its status). Asked
                        // to wait (503, 429: the door's backpressure), it sends its next request a little
                        // later.
                        for n in 0..<500 {
                            let key = "S\(sender)-\(n)"
                            let response = try? await TestClient.withClient(host: "127.0.0.1", port: port) {
                                client in
                                try await client.post(
                                    "/webhook/appointments",
                                    headers: [.contentType: "application/json"],
                                    body: ByteBuffer(string: event(key, "2025-01-10T12:30:00Z"))
                                )
                            }
                            if let response, [.serviceUnavailable, .tooManyRequests].contains(response.status) {
                                try? await Task.sleep(for: .milliseconds(50))
                                continue
                            }
                            guard let response, response.status == .accepted,
                                let id = response.headers[HTTPField.Name("x-carespool-id")!]
                            else { return (ids, 1) }
                            ids[key] = id
                            accepted.value.add(1, ordering: .relaxed)
                        }
                        return (ids, 0)
                    }
                }
                // Kill the daemon once 300 requests have their 202: every sender is mid-request then.
                // (Should every sender stop before that, the kill comes then, and the checks below fail.)
                group.addTask {
                    while accepted.value.load(ordering: .relaxed) < 300
                        && stopped.value.load(ordering: .relaxed) < senders
                    {
                        try await Task.sleep(for: .milliseconds(1))
                    }
                    kill(pid, SIGKILL)
                    killed.value.store(accepted.value.load(ordering: .relaxed), ordering: .relaxed)
                    return ([:], 0)
                }
                var ids: [String: String] = [:]
                var failed = 0
                for try await (some, failures) in group {
                    ids.merge(some) { first, _ in first }
                    failed += failures
                }
                return (ids, failed, killed.value.load(ordering: .relaxed))
            }
        }
        #expect(run.status == .signaled(SIGKILL))
        let (acceptedIDs, failed, atKill) = run.result
        #expect(atKill >= 300)
        print(
            "http kill test: \(acceptedIDs.count) requests got a 202 (\(atKill) when killed), \(failed) cut by the kill"
        )
        // Every sender's last request was cut by the kill.
        #expect(failed == senders, "requests in flight at the kill: \(failed) of \(senders) senders")

        // Restart without HTTP and let the pipeline finish everything that reached the spool.
        let view = SpoolView(root: spool)
        unlink(spool + "/processing/retrying.json")  // written anew by the next start: its readiness sign
        let second = try await Daemon.serve(spool: spool) { pid in
            try await waitUntilServing(spool)
            let finished = await eventually(timeout: .seconds(60)) {
                view.inbox().isEmpty && view.processing().isEmpty
            }
            kill(pid, SIGTERM)
            return finished
        }
        #expect(second.result)
        #expect(second.status == .exited(0))
        #expect(view.failed().isEmpty, "a request file was rejected: \(view.failed().prefix(3))")
        let doneNames = Set(view.done().map(SpoolView.original))
        let (perEvent, ledger) = try await view.database().read { db in
            let rows = try Row.fetchAll(
                db,
                sql: "SELECT appointment_id, count(*) AS n FROM appointment_events GROUP BY appointment_id"
            )
            let names = try String.fetchAll(db, sql: "SELECT original_name FROM files WHERE outcome = 'accepted'")
            return (
                Dictionary(uniqueKeysWithValues: rows.map { ($0["appointment_id"] as String, $0["n"] as Int) }), names
            )
        }
        // I4: no natural key twice. I2: every 202 is stored, its file in done/ with an accepted ledger row.
        #expect(perEvent.values.allSatisfy { $0 == 1 })
        let ledgerNames = Set(ledger)
        var missing: [String] = []
        for (key, id) in acceptedIDs.sorted(by: { $0.key < $1.key }) {
            if perEvent[key] != 1 || !doneNames.contains(id + ".json") || !ledgerNames.contains(id + ".json") {
                missing.append(key)
            }
        }
        #expect(missing.isEmpty, "202s not stored exactly once: \(missing.prefix(10))")
        // Whatever reached the spool without a 202 was complete too (it is stored, never a partial file).
        #expect(perEvent.count >= acceptedIDs.count)
    }

    /// Slow clients cannot hold the endpoint: a head not finished within --http-header-timeout is
    /// closed, a body not finished within --http-body-timeout gets 408; other senders are served
    /// meanwhile and nothing reaches an inbox from the slow ones. Past --http-max-connections, new
    /// connections wait until one closes.
    @Test func slowClientsAreCutOffAndDoNotBlockOthers() async throws {
        let dir = TempDir("httpslow")
        defer { dir.cleanup() }
        let spool = dir.path + "/spool"
        let port = freePort()
        let arguments = [
            "--http", "127.0.0.1:\(port)", "--http-header-timeout", "2", "--http-body-timeout", "1",
            "--http-max-connections", "3",
        ]
        let run = try await Daemon.serve(spool: spool, arguments: arguments) { pid in
            _ = try await curl(["http://127.0.0.1:\(port)/health"])
            let url = "http://127.0.0.1:\(port)/webhook/appointments"
            let post = ["-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-H", "Content-Type: application/json"]
            // Slowloris: half a request head, then nothing.
            let head = try RawConnection(port: port)
            head.send("POST /webhook/appointments HTTP/1.1\r\nHost: x\r\nContent-Type: appl")
            // A body that stops after 10 of its 300 bytes.
            let body = try RawConnection(port: port)
            body.send(
                "POST /webhook/appointments HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    + "Content-Length: 300\r\n\r\n{\"appointm"
            )
            let started = ContinuousClock.now
            // Each slow connection is read from now, on its own, so its time is the daemon's cut and not
            // the POST's fsyncs, which a machine busy with other writers may stretch to seconds.
            @Sendable func closedAfter(_ connection: RawConnection) async -> ((text: String, closed: Bool), Duration) {
                let reply = await connection.readUntilClosed()
                return (reply, ContinuousClock.now - started)
            }
            async let bodyRead = closedAfter(body)
            async let headRead = closedAfter(head)
            // Two slow connections open, one more allowed: a normal sender is served meanwhile.
            let meanwhile = try await curl(post + ["--data-binary", event("OK1", "2025-01-10T12:30:00Z"), url])
            let (bodyReply, bodyTime) = await bodyRead
            let (headReply, headTime) = await headRead
            body.close()
            head.close()
            let view = SpoolView(root: spool)
            let processed = await eventually { view.done().count == 1 }
            kill(pid, SIGTERM)
            return (meanwhile, bodyReply, bodyTime, headReply, headTime, processed)
        }
        let (meanwhile, bodyReply, bodyTime, headReply, headTime, processed) = run.result
        #expect(meanwhile == "202")
        #expect(bodyReply.text.hasPrefix("HTTP/1.1 408"), "\(bodyReply.text)")
        #expect(bodyReply.closed)
        // Upper bounds far from the timeouts (1 s, 2 s), for a daemon on a busy machine; which timeout
        // fired is shown by the 408 and the closed head.
        #expect(bodyTime < .seconds(10))
        #expect(headReply.closed && !headReply.text.contains("202"))
        #expect(headTime >= .seconds(1) && headTime < .seconds(12))
        #expect(processed)
        #expect(run.status == .exited(0))
        // The connection limit, on a daemon whose idle connections are not cut while it is tried: three
        // idle connections hold every slot; a fourth is not served until one of them closes.
        let limited = try await Daemon.serve(
            spool: spool,
            arguments: ["--http", "127.0.0.1:\(port)", "--http-header-timeout", "60", "--http-max-connections", "3"]
        ) { pid in
            _ = try await curl(["http://127.0.0.1:\(port)/health"])
            let url = "http://127.0.0.1:\(port)/webhook/appointments"
            let post = ["-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-H", "Content-Type: application/json"]
            let holders = try (0..<3).map { _ in try RawConnection(port: port) }
            // Taken by the daemon before the fourth comes (it accepts several in one read when late).
            #expect(await eventually { acceptQueue(port: port) == 0 }, "the daemon never accepted the three")
            try await Task.sleep(for: .milliseconds(200))
            let blocked = try await curl(
                ["-o", "/dev/null", "-w", "%{http_code}", "--max-time", "1", "http://127.0.0.1:\(port)/health"],
                attempts: 1
            )
            holders[0].close()
            let served = try await curl(
                post + ["--max-time", "60", "--data-binary", event("OK3", "2025-01-10T12:30:00Z"), url]
            )
            for holder in holders.dropFirst() { holder.close() }
            let view = SpoolView(root: spool)
            let processed = await eventually { view.done().count == 2 }
            kill(pid, SIGTERM)
            return (blocked, served, processed)
        }
        #expect(limited.result.0 == "000")
        #expect(limited.result.1 == "202")
        #expect(limited.result.2)
        #expect(limited.status == .exited(0))
        let stored = try await SpoolView(root: spool).database().read { db in
            try String.fetchAll(db, sql: "SELECT appointment_id FROM appointment_events ORDER BY 1")
        }
        #expect(stored == ["OK1", "OK3"])
    }

    /// The write itself hits ENOSPC: 507, no partial file in any inbox, the temporary file removed;
    /// when space returns, requests are accepted again. The spool is on a 4 MiB tmpfs when mounting is
    /// permitted, otherwise the test-only ENOSPC switch of the file layer stands in for it.
    @Test func aFullDiskAnswers507AndLeavesNoPartialFile() async throws {
        let dir = TempDir("httpfull")
        defer {
            _ = umount2(dir.path + "/spool", Int32(MNT_DETACH))
            dir.cleanup()
        }
        let spool = dir.path + "/spool"
        try FileManager.default.createDirectory(atPath: spool, withIntermediateDirectories: true)
        let mounted = mount("tmpfs", spool, "tmpfs", 0, "size=4m") == 0
        let filler = spool + "/filler"
        let switchFile = dir.path + "/enospc"
        var arguments = [
            "--http", "127.0.0.1:\(freePort())", "--db", dir.path + "/db.sqlite3", "--disk-reserve-mib", "0",
        ]
        let port = Int(arguments[1].split(separator: ":")[1])!
        if !mounted { arguments += ["--test-enospc-while", switchFile] }
        print("disk-full test: \(mounted ? "spool on a 4 MiB tmpfs" : "mount not permitted: ENOSPC switch")")
        // About 100 KB per request: a JSON array of appointment events.
        @Sendable func batch(_ n: Int) -> String {
            "[" + (0..<600).map { event("F\(n)-\($0)", "2025-01-10T12:30:00Z") }.joined(separator: ",") + "]"
        }
        let run = try await Daemon.serve(spool: spool, arguments: arguments) { pid in
            _ = try await curl(["http://127.0.0.1:\(port)/health"])
            let url = "http://127.0.0.1:\(port)/webhook/appointments"
            let post = ["-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-H", "Content-Type: application/json"]
            if mounted {
                // Fill the filesystem, leaving about 300 KB.
                var free = statvfs()
                statvfs(spool, &free)
                let bytes = Int(free.f_bavail) * Int(free.f_frsize) - 300_000
                FileManager.default.createFile(atPath: filler, contents: Data(count: max(0, bytes)))
            } else {
                FileManager.default.createFile(atPath: switchFile, contents: Data())
            }
            var statuses: [String] = []
            for n in 0..<12 {
                let body = dir.path + "/body\(n).json"
                try batch(n).write(toFile: body, atomically: false, encoding: .utf8)
                statuses.append(try await curl(post + ["--data-binary", "@" + body, url]))
            }
            let tmpLeft = try FileManager.default.contentsOfDirectory(atPath: spool + "/tmp").filter {
                $0.hasPrefix(".http-")
            }
            // Space returns: accepted again.
            try FileManager.default.removeItem(atPath: mounted ? filler : switchFile)
            let body = dir.path + "/body-after.json"
            try batch(99).write(toFile: body, atomically: false, encoding: .utf8)
            let after = try await curl(post + ["--data-binary", "@" + body, url])
            let view = SpoolView(root: spool)
            let settled = await eventually(timeout: .seconds(30)) { view.inbox().isEmpty && view.processing().isEmpty }
            kill(pid, SIGTERM)
            return (statuses, tmpLeft, after, settled)
        }
        let (statuses, tmpLeft, after, settled) = run.result
        #expect(statuses.contains("507"), "\(statuses)")
        #expect(statuses.allSatisfy { $0 == "202" || $0 == "507" }, "\(statuses)")
        #expect(tmpLeft.isEmpty)
        #expect(after == "202")
        #expect(settled)
        #expect(run.status == .exited(0))
        // Every file that reached an inbox was whole: each one accepted with all 600 of its events.
        let view = SpoolView(root: spool)
        #expect(view.failed().isEmpty)
        let accepted = statuses.filter { $0 == "202" }.count + 1
        let counts = try await view.database(dir.path + "/db.sqlite3").read { db in
            try Int.fetchAll(db, sql: "SELECT stored FROM files ORDER BY received_at")
        }
        #expect(counts == Array(repeating: 600, count: accepted))
    }
}
