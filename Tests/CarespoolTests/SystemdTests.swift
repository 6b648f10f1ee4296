import Foundation
import Subprocess
import Synchronization
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// A unix datagram socket standing in for systemd's notify socket: collects what the daemon sends.
final class NotifySocket: Sendable {
    let path: String
    private let fd: Int32
    private let received = Mutex<[(at: ContinuousClock.Instant, message: String)]>([])

    init(path: String) {
        self.path = path
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in path.utf8.enumerated() { raw[index] = byte }
        }
        _ = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        var timeout = timeval(tv_sec: 0, tv_usec: 100_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let thread = Thread { [self] in
            var buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                let n = buffer.withUnsafeMutableBytes { recv(self.fd, $0.baseAddress, $0.count, 0) }
                if n > 0 {
                    let message = String(decoding: buffer[..<n], as: UTF8.self)
                    self.received.withLock { $0.append((ContinuousClock.now, message)) }
                } else if n == 0 || (errno != EAGAIN && errno != EINTR) {
                    return
                }
            }
        }
        thread.start()
    }

    var messages: [String] { received.withLock { $0.map(\.message) } }
    var timed: [(at: ContinuousClock.Instant, message: String)] { received.withLock { $0 } }

    func close() {
        shutdown(fd, Int32(SHUT_RDWR))
        _ = Glibc.close(fd)
        unlink(path)
    }
}

/// The daemon speaks systemd: readiness, status, watchdog and stopping over $NOTIFY_SOCKET, and
/// journal priorities when stderr is the journal.
@Suite(.serialized) struct SystemdTests {
    @Test func readyOnlyOnceServingThenStatusWatchdogAndStopping() async throws {
        let dir = TempDir("notify")
        defer { dir.cleanup() }
        let spool = dir.path + "/spool"
        let notify = NotifySocket(path: dir.path + "/notify.sock")
        defer { notify.close() }
        let port = freePort()
        let run = try await Daemon.serve(
            spool: spool,
            arguments: ["--http", "127.0.0.1:\(port)"],
            environment: ["NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "4000000"]
        ) { pid in
            let ready = await eventually { notify.messages.contains { $0.hasPrefix("READY=1") } }
            // READY=1 means the HTTP socket is bound: answered at the first attempt.
            let health = try await curl(
                ["-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:\(port)/health"],
                attempts: 1
            )
            let pinged = await eventually(timeout: .seconds(30)) {
                notify.timed.filter { $0.message == "WATCHDOG=1" }.count >= 3
            }
            kill(pid, SIGTERM)
            return (ready, health, pinged)
        }
        let stopped = await eventually { notify.messages.contains { $0.hasPrefix("STOPPING=1") } }
        #expect(run.result.0)
        #expect(run.result.1 == "200")
        #expect(run.status == .exited(0))
        #expect(stopped)
        let messages = notify.messages
        let readyMessage = messages.first { $0.hasPrefix("READY=1") } ?? ""
        #expect(readyMessage.contains("STATUS=inbox 0, processing 0, failed 0"), "\(readyMessage)")
        // The watchdog is fed from the processing loop, every half WATCHDOG_USEC (2 s), always within it
        // (4 s: the contract; half of it is room for a busy machine's scheduling of two processes).
        let pings = notify.timed.filter { $0.message == "WATCHDOG=1" }.map(\.at)
        #expect(run.result.2 && pings.count >= 3, "\(messages)")
        let gaps = zip(pings, pings.dropFirst()).map { $1 - $0 }
        #expect(gaps.allSatisfy { $0 < .milliseconds(4_000) }, "\(gaps)")
        #expect(gaps.contains { $0 >= .milliseconds(1_500) }, "pinged every half WATCHDOG_USEC, not more: \(gaps)")
        #expect(messages.firstIndex { $0.hasPrefix("READY=1") }! < messages.firstIndex { $0.hasPrefix("STOPPING=1") }!)
    }

    /// Socket activation: systemd-socket-activate binds the port and passes it (LISTEN_FDS); the daemon
    /// serves on it without binding (it is told the same port, which it could not bind), answers, and
    /// stops cleanly.
    @Test func servesOnASocketPassedBySystemd() async throws {
        let dir = TempDir("activate")
        defer { dir.cleanup() }
        let spool = dir.path + "/spool"
        let port = freePort()
        let result = try await run(
            .name("systemd-socket-activate"),
            arguments: [
                "-l", "127.0.0.1:\(port)", Daemon.binary, "serve", "--spool", spool, "--schema",
                TestPaths.schemaJSON.path, "--http", "127.0.0.1:\(port)", "--http-open", "*", "--settle-ms", "100",
            ],
            environment: Daemon.environment,
            input: .none,
            output: .discarded,
            error: .string(limit: 1 << 20)
        ) { execution in
            let url = "http://127.0.0.1:\(port)"
            let posted = try await curl([
                "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-H", "Content-Type: application/json",
                "--data-binary", event("SA1", "2025-01-10T12:30:00Z"), url + "/webhook/appointments",
            ])
            let health = try await curl(["-o", "/dev/null", "-w", "%{http_code}", url + "/health"])
            let stored = await eventually { SpoolView(root: spool).done().count == 1 }
            kill(execution.processIdentifier.value, SIGTERM)
            return (posted, health, stored)
        }
        #expect(result.closureResult.0 == "202" && result.closureResult.1 == "200" && result.closureResult.2)
        #expect(result.terminationStatus == .exited(0))
        #expect(result.standardError.contains("HTTP endpoint on a socket passed by systemd"), "\(result.standardError)")
    }

    @Test func logLinesCarryJournalPrioritiesWhenStderrIsTheJournal() async throws {
        let dir = TempDir("journal")
        defer { dir.cleanup() }
        let spool = dir.path + "/spool"
        try FileManager.default.createDirectory(
            atPath: spool + "/inbox/appointments",
            withIntermediateDirectories: true
        )
        try dropLikeRsync("not json", into: spool + "/inbox/appointments", name: "bad.json")
        // systemd sets JOURNAL_STREAM to stderr's device:inode; the shell does the same for its pipe.
        let script =
            "export JOURNAL_STREAM=$(stat -L -c '%d:%i' /proc/self/fd/2); exec \"$0\" serve --spool \"$1\" "
            + "--schema \"$2\" --http off --settle-ms 100"
        let result = try await run(
            .name("sh"),
            arguments: ["-c", script, Daemon.binary, spool, TestPaths.schemaJSON.path],
            environment: Daemon.environment,
            input: .none,
            output: .discarded,
            error: .string(limit: 1 << 20)
        ) { execution in
            let view = SpoolView(root: spool)
            _ = await eventually { view.failed().count == 1 }
            kill(execution.processIdentifier.value, SIGTERM)
        }
        let lines = result.standardError.split(separator: "\n").map(String.init)
        #expect(result.terminationStatus == .exited(0))
        #expect(lines.contains { $0.hasPrefix("<5>carespool: carespool serving") }, "\(lines)")
        #expect(lines.contains { $0.hasPrefix("<6>carespool: file finished") && $0.contains("file.outcome=rejected") })
        #expect(lines.allSatisfy { $0.hasPrefix("<") }, "\(lines)")
        // Without JOURNAL_STREAM: plain lines with a timestamp and the level's name.
        unlink(spool + "/processing/retrying.json")  // written anew by the next start: its readiness sign
        let plain = try await Daemon.serve(spool: spool) { pid in
            try await waitUntilServing(spool)
            kill(pid, SIGTERM)
        }
        let plainLines = plain.log.split(separator: "\n")
        #expect(plainLines.contains { $0.hasPrefix("20") && $0.contains(" notice carespool:") }, "\(plainLines)")
        #expect(!plainLines.contains { $0.hasPrefix("<") })
    }
}

/// `make install` / `make uninstall` into a DESTDIR, and the unit's hardening score.
@Suite(.serialized) struct InstallTests {
    static func make(_ arguments: [String]) async throws -> (status: TerminationStatus, out: String) {
        let result = try await run(
            .name("make"),
            arguments: Arguments(["-s", "-C", TestPaths.repoRoot.path] + arguments),
            output: .string(limit: 1 << 20),
            error: .string(limit: 1 << 20)
        )
        return (result.terminationStatus, result.standardOutput + result.standardError)
    }

    /// docs/carespool.1 is generated (`make man`); it must describe every command the binary has.
    @Test func theManualCoversEveryCommand() async throws {
        let manual = try String(
            contentsOf: TestPaths.repoRoot.appendingPathComponent("docs/carespool.1"),
            encoding: .utf8
        )
        let help = try await Daemon.command(["--help"])
        let section = help.out.components(separatedBy: "SUBCOMMANDS:").last ?? ""
        let commands = section.split(separator: "\n").compactMap { line -> String? in
            let word = line.split(separator: " ").first.map(String.init) ?? ""
            // "  name   description": two spaces, then the name; continuation lines are indented further.
            guard line.hasPrefix("  "), !line.hasPrefix("   "), word.first?.isLowercase == true else { return nil }
            return word
        }
        #expect(commands.count >= 12, "\(help.out)")
        for command in commands { #expect(manual.contains(".It Em \(command)"), "\(command) missing: run make man") }
    }

    @Test func installPutsEverythingInPlaceAndUninstallRemovesIt() async throws {
        let dir = TempDir("install")
        defer { dir.cleanup() }
        let root = dir.path + "/root"
        let installed = try await Self.make(["install", "DESTDIR=" + root, "BIN=" + Daemon.binary])
        #expect(installed.status == .exited(0), "\(installed.out)")
        let files: [(String, Int)] = [
            ("/usr/bin/carespool", 0o755), ("/usr/lib/systemd/system/carespool.service", 0o644),
            ("/usr/lib/systemd/system/carespool.socket", 0o644),
            ("/usr/lib/sysusers.d/carespool.conf", 0o644),
            ("/usr/lib/tmpfiles.d/carespool.conf", 0o644), ("/usr/share/carespool/schema.json", 0o644),
            ("/usr/share/man/man1/carespool.1", 0o644),
            ("/usr/share/doc/carespool/OPERATIONS.md", 0o644),
            ("/etc/carespool/carespool.toml", 0o640),
        ]
        for (path, mode) in files {
            let attributes = try? FileManager.default.attributesOfItem(atPath: root + path)
            #expect((attributes?[.posixPermissions] as? Int) == mode, "\(path)")
        }
        // The installed default configuration is valid and names the installed schema.
        let check = try await Daemon.command(["config", "check", root + "/etc/carespool/carespool.toml"])
        #expect(check.status == .exited(0))
        #expect(check.out.contains("schema = \"/usr/share/carespool/schema.json\""))
        // The unit's exposure, as systemd itself scores it: at most 1.5.
        let security = try await run(
            .name("systemd-analyze"),
            arguments: ["security", "--offline=yes", root + "/usr/lib/systemd/system/carespool.service"],
            output: .string(limit: 1 << 20),
            error: .string(limit: 1 << 20)
        )
        let text = security.standardOutput + security.standardError
        let score = text.split(separator: "\n").first { $0.contains("Overall exposure level") }
            .flatMap { line in line.split(separator: " ").compactMap { Double($0) }.first }
        #expect(score != nil && score! <= 1.5, "\(text.suffix(300))")
        // An operator's change to the configuration survives uninstall; everything else goes.
        try "# changed\n".write(toFile: root + "/etc/carespool/carespool.toml", atomically: true, encoding: .utf8)
        let again = try await Self.make(["install", "DESTDIR=" + root, "BIN=" + Daemon.binary])
        #expect(again.status == .exited(0))
        #expect(try String(contentsOfFile: root + "/etc/carespool/carespool.toml", encoding: .utf8) == "# changed\n")
        let removed = try await Self.make(["uninstall", "DESTDIR=" + root])
        #expect(removed.status == .exited(0))
        for (path, _) in files where path != "/etc/carespool/carespool.toml" {
            #expect(!FileManager.default.fileExists(atPath: root + path), "\(path)")
        }
        #expect(FileManager.default.fileExists(atPath: root + "/etc/carespool/carespool.toml"))
    }
}
