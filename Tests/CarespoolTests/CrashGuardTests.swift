import Foundation
import GRDB
import Subprocess
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// A file that crashes the daemon (a trap: the test-only `--test-crash-on` option makes one on
/// purpose) must not crash it forever, nor hold up the files behind it. The real binary, three starts:
/// the crash with the file in a batch; the file alone, crashing again; then the file set aside in
/// failed/ with the reason, and every other file stored.
@Suite struct CrashGuardTests {
    /// Whether process `pid` has ended (gone, or a zombie not yet reaped).
    static func ended(_ pid: pid_t) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8) else { return true }
        guard let close = stat.lastIndex(of: ")") else { return true }
        return stat[stat.index(close, offsetBy: 2)] == "Z"
    }

    static func markerLines(_ spool: String) -> [String] {
        ((try? String(contentsOfFile: spool + "/processing/.crashed", encoding: .utf8)) ?? "")
            .split(separator: "\n").map(String.init)
    }

    @Test func aFileThatCrashesTheDaemonIsSetAsideAfterTheSecondCrashAndTheOthersGoOn() async throws {
        let dir = TempDir("crashguard")
        defer { dir.cleanup() }
        let spool = dir.path + "/spool"
        let view = SpoolView(root: spool)
        // The crashes are deliberate: no backtrace (under load Swift's backtracer took 22 s of the test's time).
        let environment = ["SWIFT_BACKTRACE": "enable=no"]
        let arguments = ["--settle-ms", "100", "--test-crash-on", "poison"]

        // Start 1: the files are found together and processed in one batch; the poison crashes it.
        let first = try await Daemon.serve(spool: spool, arguments: arguments, environment: environment) { pid in
            try await waitUntilServing(spool)
            let inbox = spool + "/inbox/appointments"
            for n in 0..<20 {
                try dropLikeRsync(event("G\(n)", "2025-03-01T10:00:00Z"), into: inbox, name: "good\(n).json")
            }
            try dropLikeRsync(event("POISON", "2025-03-01T10:00:00Z"), into: inbox, name: "poison.json")
            return await eventually { Self.ended(pid) }
        }
        #expect(first.result, "the test switch did not crash the daemon")
        #expect(first.status != .exited(0))
        let named = Self.markerLines(spool)
        #expect(!named.isEmpty, "the crash named no file in processing/.crashed")
        let poison = view.processing().first { $0.hasSuffix("--poison.json") }.map { String($0.prefix(36)) }
        #expect(poison != nil && named.contains(poison!))

        // Start 2: every named file goes alone; the poison crashes the daemon again, alone.
        let second = try await Daemon.serve(spool: spool, arguments: arguments, environment: environment) { pid in
            // Each named file is a commit of its own before the poison: room for a loaded machine's fsyncs.
            await eventually(timeout: .seconds(120)) { Self.ended(pid) }
        }
        #expect(second.result, "the daemon survived the poison on its own")
        #expect(second.log.contains("processed alone"))
        #expect(Self.markerLines(spool).filter { $0 == poison }.count == 2)

        // Start 3: the poison is set aside unread; the other files are stored; the daemon keeps running.
        let third = try await Daemon.serve(spool: spool, arguments: arguments, environment: environment) { pid in
            let settled = await eventually {
                view.processing().isEmpty && view.done().count == 20
                    && view.failed()
                        == view.failed().filter {
                            $0.hasSuffix("--poison.json")
                        }
                    && view.failed().count == 1
            }
            let alive = !Self.ended(pid)
            kill(pid, SIGTERM)
            return (settled, alive)
        }
        #expect(
            third.result.0,
            "done: \(view.done().count), failed: \(view.failed()), processing: \(view.processing())"
        )
        #expect(third.result.1, "the daemon did not keep running")
        #expect(third.status == .exited(0))
        #expect(third.log.contains("file crashed the daemon twice"))
        let sidecar = try String(
            contentsOfFile: spool + "/failed/appointments/" + view.failed()[0] + ".error.json",
            encoding: .utf8
        )
        #expect(sidecar.contains("crashed twice while processing this file"))
        let stored = try await view.database().read { db in
            try String.fetchAll(db, sql: "SELECT appointment_id FROM appointment_events ORDER BY appointment_id")
        }
        #expect(stored == (0..<20).map { "G\($0)" }.sorted())
        let outcome = try await view.database().read { db in
            try String.fetchOne(db, sql: "SELECT outcome FROM files WHERE original_name = 'poison.json'")
        }
        #expect(outcome == "rejected")
    }
}
