import Foundation
import GRDB
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
            for attempt in 0..<50 {
                let result = try await Subprocess.run(
                    .name("curl"),
                    arguments: [
                        "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-H",
                        "Content-Type: application/json",
                        "--data-binary", event("H\(attempt)", "2025-01-10T12:30:00Z"),
                        "http://127.0.0.1:\(port)/webhook/appointments",
                    ],
                    output: .string(limit: 1 << 16),
                    error: .discarded
                )
                let code = result.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
                if code == "000" && statuses.isEmpty {
                    try await Task.sleep(for: .milliseconds(100))  // not listening yet
                    continue
                }
                statuses.append(code)
                if statuses.count == 10 { break }
            }
            let view = SpoolView(root: spool)
            let stored = await eventually { view.done().count == 10 }
            let health = try await Subprocess.run(
                .name("curl"),
                arguments: ["-s", "http://127.0.0.1:\(port)/health"],
                output: .string(limit: 1 << 16),
                error: .discarded
            )
            kill(pid, SIGTERM)
            return (statuses, stored, health.standardOutput)
        }
        #expect(run.result.0 == Array(repeating: "202", count: 10))
        #expect(run.result.1)
        #expect(run.result.2.contains("\"db\":\"up\""))
        #expect(run.status == .exited(0))
        let events = try await SpoolView(root: spool).database().read { db in
            try Int.fetchOne(db, sql: "SELECT count(*) FROM appointment_events")
        }
        #expect(events == 10)
    }
}
