import Foundation
import GRDB
import Subprocess
import Synchronization
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// An HTTP receiver on loopback for the notifier's webhook: records each request's headers and body and
/// answers with the status `answer` gives for the request's index (from 0).
final class LoopbackReceiver: @unchecked Sendable {
    struct Request: Sendable {
        var headers: [String: String]
        var body: [UInt8]
    }

    let port: Int
    private let fd: Int32
    private let answer: @Sendable (Int) -> Int
    let requests = Mutex<[Request]>([])

    init(answer: @escaping @Sendable (Int) -> Int) throws {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(listener, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard bound == 0, listen(listener, 16) == 0 else { throw CocoaError(.fileWriteUnknown) }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &length) }
        }
        fd = listener
        port = Int(UInt16(bigEndian: address.sin_port))
        self.answer = answer
        Thread { [self] in serve() }.start()
    }

    func close() { shutdown(fd, Int32(SHUT_RDWR)) }

    private func serve() {
        while true {
            let client = accept(fd, nil, nil)
            if client < 0 { return }
            var data: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 4_096)
            var request: Request?
            while request == nil {
                let n = buffer.withUnsafeMutableBytes { recv(client, $0.baseAddress!, $0.count, 0) }
                if n <= 0 { break }
                data += buffer[0..<n]
                guard let end = data.indices.first(where: { data[$0...].starts(with: [13, 10, 13, 10]) }) else {
                    continue
                }
                var headers: [String: String] = [:]
                for line in String(decoding: data[..<end], as: UTF8.self).split(separator: "\r\n").dropFirst() {
                    guard let colon = line.firstIndex(of: ":") else { continue }
                    headers[line[..<colon].lowercased()] = line[line.index(after: colon)...]
                        .trimmingCharacters(in: .whitespaces)
                }
                let length = Int(headers["content-length"] ?? "0") ?? 0
                if data.count - (end + 4) >= length {
                    request = Request(headers: headers, body: Array(data[(end + 4)..<(end + 4 + length)]))
                }
            }
            if let request {
                let index = requests.withLock { list in
                    list.append(request)
                    return list.count - 1
                }
                let status = answer(index)
                let reply = Array("HTTP/1.1 \(status) X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".utf8)
                _ = reply.withUnsafeBytes { send(client, $0.baseAddress!, $0.count, Int32(MSG_NOSIGNAL)) }
            }
            Glibc.close(client)
        }
    }
}

/// Notifications through the real daemon: a hook program and a webhook, delivered at least once from the
/// queue in the database, retried with backoff, never repeated after success, never carrying a value.
@Suite(.serialized) struct NotifyDaemonTests {
    /// A hook that logs each call (its environment and stdin) to `log`, failing while `fail` has lines
    /// left (one taken per call), blocking 20 s after logging "blocked" while `block` exists, and waiting
    /// before it delivers while `gate` exists.
    static func hook(in dir: TempDir) throws -> (path: String, log: String, fail: String, block: String, gate: String) {
        let path = dir.file("page-oncall")
        let log = dir.file("hook.log")
        let fail = dir.file("fail")
        let block = dir.file("block")
        let gate = dir.file("gate")
        let script = """
            #!/bin/sh
            input=$(cat)
            if [ -e \(block) ]; then echo "blocked $CARESPOOL_FILE_ID" >> \(log); exec sleep 20; fi
            if [ -s \(fail) ]; then
              sed -i 1d \(fail)
              echo "failed $CARESPOOL_FILE_ID $CARESPOOL_ATTEMPT" >> \(log)
              exit 1
            fi
            while [ -e \(gate) ]; do sleep 0.05; done
            leaked=$(ls -l /proc/$$/fd | grep -c -E 'socket:|anon_inode:|[.]sqlite3')
            echo "delivered leaked=$leaked $CARESPOOL_FILE_ID $CARESPOOL_KIND $CARESPOOL_OUTCOME $CARESPOOL_STORED $CARESPOOL_REJECTED $CARESPOOL_ATTEMPT name=${CARESPOOL_FILE_NAME-none} path=$PATH home=${HOME-none} $input" >> \(log)
            """
        try script.write(toFile: path, atomically: true, encoding: .utf8)
        chmod(path, 0o755)
        return (path, log, fail, block, gate)
    }

    static func lines(_ path: String) -> [String] {
        ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
    }

    static func config(_ dir: TempDir, _ body: String) throws -> String {
        let path = dir.file("carespool.toml")
        try body.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @Test func aHookThatFailsTwiceIsCalledOnceMoreAndNeverAgainAndCarriesNoValue() async throws {
        let dir = TempDir("notify-hook")
        defer { dir.cleanup() }
        let spool = dir.file("spool")
        let hook = try Self.hook(in: dir)
        try "1\n2\n".write(toFile: hook.fail, atomically: true, encoding: .utf8)
        // Backoff 2 s then 4 s; and the third call waits at the gate until `status` has seen the notification
        // owed, however slow the machine (CI missed a window of 300 + 600 ms once).
        try "".write(toFile: hook.gate, atomically: true, encoding: .utf8)
        let config = try Self.config(dir, "[notify]\ncommand = \"\(hook.path)\"\nretry_initial_ms = 2000\n")
        let view = SpoolView(root: spool)
        let run = try await Daemon.serve(spool: spool, arguments: ["--config", config]) { pid in
            try await waitUntilServing(spool)
            // Accepted: no notification (only partial and rejected by default). Then a partial file.
            try dropLikeRsync(
                event("OK1", "2031-05-06T07:08:09Z"),
                into: spool + "/inbox/appointments",
                name: "ok.json"
            )
            _ = await eventually { view.done().count == 1 }
            let partial =
                event("A1", "2031-05-06T07:08:09Z", patient: "PATIENT-7fz9", notes: "Allergic to penicillin") + "\n"
                + event("B1", "2025-01-10 12:30", patient: "PATIENT-7fz9") + "\n"
            try dropLikeRsync(partial, into: spool + "/inbox/appointments", name: "secret-name.ndjson")
            // While the hook fails, status shows the notification owed and the last error.
            var owed = false
            let seeing = ContinuousClock.now + .seconds(20)
            while !owed && ContinuousClock.now < seeing {
                let status = try await Daemon.command(["status", "--spool", spool])
                owed = status.out.contains("notifications: 1 undelivered") && status.out.contains("exit status 1")
                if !owed { try await Task.sleep(for: .milliseconds(20)) }
            }
            #expect(owed, "status never showed the notification owed")
            try FileManager.default.removeItem(atPath: hook.gate)
            let delivered = await eventually { Self.lines(hook.log).contains { $0.hasPrefix("delivered") } }
            // Delivered: no further call, however long we wait (a fourth would be a redelivery).
            try await Task.sleep(for: .milliseconds(2_500))
            kill(pid, SIGTERM)
            return delivered
        }
        #expect(run.result)
        let calls = Self.lines(hook.log)
        #expect(calls.count == 3, "\(calls)")
        let id = try #require(calls.last?.split(separator: " ").dropFirst(2).first.map(String.init))
        #expect(
            calls.prefix(2).map { $0.split(separator: " ").prefix(2).joined(separator: " ") } == [
                "failed \(id)", "failed \(id)",
            ]
        )
        let last = calls[2]
        // Nothing of the daemon's open descriptors reaches the hook (its database, sockets, epoll).
        #expect(last.hasPrefix("delivered leaked=0 \(id) appointments partial 1 1 3 name=none path=/usr/local/sbin"))
        #expect(last.contains("home=none"))
        #expect(
            last.contains("\"outcome\":\"partial\"")
                && last.contains("\"counts\":{\"stored\":1,\"duplicates\":0,\"rejected\":1}")
        )
        #expect(last.contains("\"id\":\"\(id)\"") && last.contains("\"attempt\":3"))
        for secret in DaemonTests.secrets { #expect(!last.contains(secret), "\(secret)") }
        #expect(!run.log.contains("secret-name") && !run.log.contains("PATIENT-7fz9"))
        #expect(run.log.contains("notification not delivered") && run.log.contains("notification delivered"))
        let owed = try await view.database().read { db in
            try Int.fetchOne(db, sql: "SELECT count(*) FROM notifications")
        }
        #expect(owed == 0)
        let status = try await Daemon.command(["status", "--spool", spool, "--json"])
        #expect(status.out.contains("\"notifications\":{\"undelivered\":0,"))
    }

    @Test func aKillBetweenTheVerdictAndTheDeliveryDeliversAfterTheRestartOnce() async throws {
        let dir = TempDir("notify-kill")
        defer { dir.cleanup() }
        let spool = dir.file("spool")
        let hook = try Self.hook(in: dir)
        try "".write(toFile: hook.block, atomically: true, encoding: .utf8)
        let config = try Self.config(
            dir,
            "[notify]\ncommand = \"\(hook.path)\"\nretry_initial_ms = 200\ninclude_name = true\ntimeout_s = 60\n"
        )
        let view = SpoolView(root: spool)
        let first = try await Daemon.serve(spool: spool, arguments: ["--config", config]) { pid in
            try await waitUntilServing(spool)
            try dropLikeRsync("{not json", into: spool + "/inbox/appointments", name: "broken.json")
            // The verdict is committed and the hook is running: kill -9 now.
            let blocked = await eventually { Self.lines(hook.log).contains { $0.hasPrefix("blocked") } }
            kill(pid, SIGKILL)
            return blocked
        }
        #expect(first.result)
        #expect(first.status == .signaled(SIGKILL))
        #expect(view.failed().count == 1)
        // The hook killed with the daemon's group is not ours to wait for: its sleep ends on its own.
        try FileManager.default.removeItem(atPath: hook.block)
        let second = try await Daemon.serve(spool: spool, arguments: ["--config", config]) { pid in
            let delivered = await eventually { Self.lines(hook.log).contains { $0.hasPrefix("delivered") } }
            try await Task.sleep(for: .milliseconds(1_000))
            kill(pid, SIGTERM)
            return delivered
        }
        #expect(second.result)
        let delivered = Self.lines(hook.log).filter { $0.hasPrefix("delivered") }
        #expect(delivered.count == 1)
        #expect(delivered.first?.contains(" appointments rejected 0 0 1 name=broken.json ") == true, "\(delivered)")
        #expect(delivered.first?.contains("\"file_name\":\"broken.json\"") == true)
    }

    @Test func aWebhookIsSignedAsStandardWebhooksRetriedAfterA500AndTheHookBesideItNotRepeated() async throws {
        let dir = TempDir("notify-webhook")
        defer { dir.cleanup() }
        let spool = dir.file("spool")
        let hook = try Self.hook(in: dir)
        let receiver = try LoopbackReceiver { index in index == 0 ? 500 : 204 }
        defer { receiver.close() }
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
        let secretFile = dir.file("notify.secret")
        try secret.write(toFile: secretFile, atomically: true, encoding: .utf8)
        chmod(secretFile, 0o600)
        let config = try Self.config(
            dir,
            """
            [notify]
            command = "\(hook.path)"
            url = "http://127.0.0.1:\(receiver.port)/hooks/carespool"
            secret_file = "\(secretFile)"
            outcomes = ["rejected", "partial", "accepted"]
            retry_initial_ms = 300

            """
        )
        let run = try await Daemon.serve(spool: spool, arguments: ["--config", config]) { pid in
            try await waitUntilServing(spool)
            try dropLikeRsync(
                intakeCSV(count: 3) + "M9,,Bad,1980-01-01,VX1,2025-03-01,x\n",
                into: spool + "/inbox/intake",
                name: "visits.csv"
            )
            let both = await eventually {
                receiver.requests.withLock { $0.count } == 2 && Self.lines(hook.log).count == 1
            }
            try await Task.sleep(for: .milliseconds(1_500))
            kill(pid, SIGTERM)
            return both
        }
        #expect(run.result)
        let requests = receiver.requests.withLock { $0 }
        #expect(requests.count == 2)
        #expect(Self.lines(hook.log).count == 1)
        for request in requests {
            #expect(
                try await OfficialStandardWebhooks.verify(body: request.body, headers: request.headers, secret: secret)
            )
            // Tampered, it is refused: the check is real.
            #expect(
                !(try await OfficialStandardWebhooks.verify(
                    body: request.body + [0x20],
                    headers: request.headers,
                    secret: secret
                ))
            )
            let text = String(decoding: request.body, as: UTF8.self)
            #expect(text.contains("\"kind\":\"intake\",\"outcome\":\"partial\""))
            #expect(!text.contains("visits.csv") && !text.contains("MRN") && !text.contains("file_name"))
        }
        #expect(requests[0].headers["webhook-id"] == requests[1].headers["webhook-id"])
        #expect(requests[0].headers["content-type"] == "application/json")
        #expect(String(decoding: requests[1].body, as: UTF8.self).contains("\"attempt\":2"))
    }

    @Test func aReceiverThatNeverAnswersDelaysNeitherTheFilesNorTheHook() async throws {
        let dir = TempDir("notify-hang")
        defer { dir.cleanup() }
        let spool = dir.file("spool")
        let hook = try Self.hook(in: dir)
        // The receiver holds each request 10 s unanswered (past the 4 s timeout), one at a time.
        let receiver = try LoopbackReceiver { _ in
            usleep(10_000_000)
            return 204
        }
        defer { receiver.close() }
        let config = try Self.config(
            dir,
            "[notify]\ncommand = \"\(hook.path)\"\nurl = \"http://127.0.0.1:\(receiver.port)/x\"\n"
                + "secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\ntimeout_s = 4\n"
        )
        let view = SpoolView(root: spool)
        let run = try await Daemon.serve(spool: spool, arguments: ["--config", config]) { pid in
            try await waitUntilServing(spool)
            for n in 0..<8 { try dropLikeRsync("{x\(n)", into: spool + "/inbox/appointments", name: "bad\(n).json") }
            let failed = await eventually { view.failed().count == 8 }
            let start = ContinuousClock.now
            // Eight webhook attempts take 32 seconds at least; the hook's eight deliveries do not wait.
            let hooked = await eventually(timeout: .seconds(30)) {
                Self.lines(hook.log).filter { $0.hasPrefix("delivered") }.count == 8
            }
            let waited = ContinuousClock.now - start
            kill(pid, SIGTERM)
            return (failed, hooked, waited)
        }
        #expect(run.result.0 && run.result.1)
        // Behind the webhook they would take 32 seconds at least; alone they took up to 5.9 s on a loaded
        // machine running the whole suite (a clean clone's `make test`), so the bound is far from both.
        #expect(run.result.2 < .seconds(16), "the hook's deliveries waited \(run.result.2) behind the webhook")
    }

    @Test func aDeliveryWhoseQueueRowCannotBeWrittenIsNotRepeatedAndSigtermAbandonsAHangingHook() async throws {
        let dir = TempDir("notify-locked")
        defer { dir.cleanup() }
        let spool = dir.file("spool")
        let hook = try Self.hook(in: dir)
        let slow = dir.file("slow-hook")
        // Logs "started", waits for the test to hold the database locked (the file `go`), then delivers.
        let go = dir.file("go")
        let script =
            "#!/bin/sh\necho started >> \(hook.log)\nwhile [ ! -e \(go) ]; do sleep 0.05; done\nexec \(hook.path)\n"
        try script.write(toFile: slow, atomically: true, encoding: .utf8)
        chmod(slow, 0o755)
        let config = try Self.config(dir, "[notify]\ncommand = \"\(slow)\"\nretry_initial_ms = 100\ntimeout_s = 60\n")
        let view = SpoolView(root: spool)
        let run = try await Daemon.serve(spool: spool, arguments: ["--config", config, "--busy-timeout-ms", "100"]) {
            pid in
            try await waitUntilServing(spool)
            try dropLikeRsync("{x", into: spool + "/inbox/appointments", name: "bad.json")
            _ = await eventually { Self.lines(hook.log).contains("started") }
            // An exclusive lock on the database from before the hook delivers until 3 s after: the delivered
            // row cannot be deleted (a handshake, not a race with the hook, however slow the machine).
            let locked = await offThePool {
                var configuration = Configuration()
                configuration.busyMode = .timeout(5)
                guard let queue = try? DatabaseQueue(path: spool + "/carespool.sqlite3", configuration: configuration)
                else { return false }
                return
                    (try? queue.inTransaction(.exclusive) { _ in
                        FileManager.default.createFile(atPath: go, contents: nil)
                        _ = pollUntil(.seconds(60)) { Self.lines(hook.log).contains { $0.hasPrefix("delivered") } }
                        usleep(3_000_000)
                        return .commit
                    }) != nil
            }
            let drained = await eventually {
                ((try? view.database().read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM notifications") })
                    ?? nil) == 0
            }
            // Then a hook that hangs: SIGTERM abandons it at once, not counted as an attempt.
            try "".write(toFile: hook.block, atomically: true, encoding: .utf8)
            try dropLikeRsync("{y", into: spool + "/inbox/appointments", name: "bad2.json")
            _ = await eventually { Self.lines(hook.log).contains { $0.hasPrefix("blocked") } }
            let stopAsked = ContinuousClock.now
            kill(pid, SIGTERM)
            return (locked, drained, stopAsked)
        }
        let stopped = ContinuousClock.now
        #expect(run.result.0, "the database was never locked")
        #expect(run.result.1)
        #expect(run.status == .exited(0))
        // Waiting for the hook would take its 20 s sleep; the stop itself closes the database (an fsync a loaded
        // machine may stretch to seconds).
        #expect(stopped - run.result.2 < .seconds(12), "SIGTERM waited for the hanging hook")
        #expect(Self.lines(hook.log).filter { $0.hasPrefix("delivered") }.count == 1)
        #expect(run.log.contains("notification queue cannot be written"))
        #expect(run.log.contains("notification abandoned"))
        let (owed, attempts) = try await view.database().read { db in
            (
                try Int.fetchOne(db, sql: "SELECT count(*) FROM notifications"),
                try Int.fetchOne(db, sql: "SELECT max(attempts) FROM notifications")
            )
        }
        #expect(owed == 1 && attempts == 0)
    }

    @Test func notifyConfigurationMistakesAreNamed() async throws {
        let dir = TempDir("notify-config")
        defer { dir.cleanup() }
        for (body, expected) in [
            ("[notify]\ncommand = \"page-oncall\"\n", "notify.command"),
            (
                "[notify]\nurl = \"https://alerts.example.com/x\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n",
                "https is not supported"
            ),
            ("[notify]\nurl = \"http://127.0.0.1:9/x\"\n", "needs secret_file"),
            ("[notify]\nurl = \"http://127.0.0.1:9/x\"\nsecret = \"whsec_c2hvcnQ=\"\n", "notify.secret"),
            ("[notify]\ncommand = \"/bin/true\"\noutcomes = [\"failed\"]\n", "notify.outcomes"),
            ("[notify]\n", "give command, url or both"),
            ("[notify]\ncommand = \"/nonexistent/page-oncall\"\n", "is not an executable file"),
            (
                "[notify]\nurl = \"http://127.0.0.1\\r\\nX-Evil: 1:9/x\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n",
                "must be http://"
            ),
            (
                "[notify]\nurl = \"http://::1/x\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n",
                "must be http://"
            ),
            (
                "[notify]\nurl = \"http://127.0.0.1:0/x\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n",
                "must be http://"
            ),
            (
                "[notify]\nurl = \"http://a b/x\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n",
                "must be http://"
            ),
            (
                "[notify]\nurl = \"http://h/x#frag\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n",
                "must be http://"
            ),
        ] {
            let path = try Self.config(dir, body)
            let checked = try await Daemon.command([
                "serve", "--config", path, "--spool", dir.file("spool"), "--http", "off",
            ])
            #expect(checked.status == .exited(78), "\(body)")
            #expect(checked.err.contains(expected), "\(body): \(checked.err)")
        }
    }
}

/// A journald stand-in: a datagram socket at `path`, every entry it receives kept.
final class JournalSink: @unchecked Sendable {
    let path: String
    private let fd: Int32
    let entries = Mutex<[[UInt8]]>([])

    init(path: String) throws {
        self.path = path
        let socketFD = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in path.utf8.enumerated() { raw[index] = byte }
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(socketFD, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard bound == 0 else { throw CocoaError(.fileWriteUnknown) }
        fd = socketFD
        Thread { [self] in receive() }.start()
    }

    func close() { shutdown(fd, Int32(SHUT_RDWR)) }

    private func receive() {
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
            if n <= 0 { return }
            entries.withLock { $0.append(Array(buffer[0..<n])) }
        }
    }

    /// Each entry's fields (native protocol: `NAME=value` lines, or `NAME\n<u64 length><value>\n`).
    var fields: [[String: String]] {
        entries.withLock { $0 }.map { bytes in
            var result: [String: String] = [:]
            var index = 0
            while index < bytes.count {
                let end = bytes[index...].firstIndex(of: 0x0A) ?? bytes.count
                let line = bytes[index..<end]
                if let equals = line.firstIndex(of: UInt8(ascii: "=")) {
                    result[String(decoding: line[..<equals], as: UTF8.self)] = String(
                        decoding: line[(equals + 1)...],
                        as: UTF8.self
                    )
                    index = end + 1
                } else {
                    var length: UInt64 = 0
                    for (shift, byte) in bytes[(end + 1)..<(end + 9)].enumerated() {
                        length |= UInt64(byte) << (8 * shift)
                    }
                    let start = end + 9
                    result[String(decoding: line, as: UTF8.self)] = String(
                        decoding: bytes[start..<(start + Int(length))],
                        as: UTF8.self
                    )
                    index = start + Int(length) + 1
                }
            }
            return result
        }
    }
}

@Suite(.serialized) struct JournalDaemonTests {
    @Test func outcomesReachTheJournalWithTheirStableMessageIDAndNoName() async throws {
        let dir = TempDir("journal")
        defer { dir.cleanup() }
        let spool = dir.file("spool")
        let sink = try JournalSink(path: dir.file("journal.socket"))
        defer { sink.close() }
        let view = SpoolView(root: spool)
        let run = try await Daemon.serve(spool: spool, arguments: ["--log-journal", sink.path]) { pid in
            try await waitUntilServing(spool)
            try dropLikeRsync(
                event("OK1", "2031-05-06T07:08:09Z"),
                into: spool + "/inbox/appointments",
                name: "ok.json"
            )
            try dropLikeRsync("{\"x\n", into: spool + "/inbox/appointments", name: "secret-name.json")
            let finished = await eventually { view.done().count == 1 && view.failed().count == 1 }
            _ = await eventually { sink.fields.filter { $0["MESSAGE_ID"] != nil }.count == 2 }
            kill(pid, SIGTERM)
            return finished
        }
        #expect(run.result)
        let entries = sink.fields
        let rejected = try #require(entries.first { $0["MESSAGE_ID"] == "6da8d4b10f92ce050ac7de87de08491a" })
        let accepted = try #require(entries.first { $0["MESSAGE_ID"] == "a06cce9fcdf9203c84f6fcf43c309085" })
        #expect(rejected["CARESPOOL_FILE_OUTCOME"] == "rejected" && accepted["CARESPOOL_FILE_OUTCOME"] == "accepted")
        #expect(rejected["PRIORITY"] == "6" && rejected["SYSLOG_IDENTIFIER"] == "carespool")
        #expect(rejected["CARESPOOL_FILE_ID"]?.count == 36)
        #expect(rejected["MESSAGE"]?.hasPrefix("carespool: file finished") == true)
        #expect(!sink.entries.withLock { $0 }.contains { String(decoding: $0, as: UTF8.self).contains("secret-name") })
        // Sent to the journal, not written to stderr as well.
        #expect(!run.log.contains("file finished"))
    }
}
