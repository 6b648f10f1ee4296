import Foundation
import GRDB
import Subprocess
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// A large legitimate file is work, not a hang (issue 16, finding 4): SIGTERM stops the daemon within
/// seconds in the middle of it and it resumes after the restart, stored once; a signal sent from outside
/// (systemd's watchdog sends SIGABRT) is no crash of the file in hand, which is not set aside.
@Suite(.serialized) struct ProgressTests {
    /// 300,000 appointment events, one a line: several seconds of streaming in a debug build.
    static func bigFile() -> String {
        var text = ""
        text.reserveCapacity(300_000 * 120)
        for n in 0..<300_000 { text += event("BIG\(n)", "2025-03-01T10:00:00Z") + "\n" }
        return text
    }

    static func stored(_ spool: String) throws -> Int {
        try SpoolView(root: spool).database().read { db in
            try Int.fetchOne(db, sql: "SELECT count(*) FROM appointment_events") ?? 0
        }
    }

    @Test func sigtermStopsWithinSecondsMidFileAndTheFileResumesStoredOnce() async throws {
        let dir = TempDir("midfile")
        defer { dir.cleanup() }
        let spool = dir.path + "/spool"
        let text = await offThePool { Self.bigFile() }
        // Commits every 200 ms: the stop comes, from a thread of its own, once 20,000 events are stored.
        let first = try await Daemon.serve(spool: spool, arguments: ["--chunk-commit-ms", "200"]) { pid in
            try await waitUntilServing(spool)
            try dropLikeRsync(text, into: spool + "/inbox/appointments", name: "big.ndjson")
            let events = RowCount(spool: spool, "SELECT count(*) FROM appointment_events")
            guard let asked = await signal(pid, SIGTERM, when: { events() >= 20_000 }) else { return Double?.none }
            _ = await eventually(timeout: .seconds(60)) { CrashGuardTests.ended(pid) }
            let took = ContinuousClock.now - asked
            return Double(took.components.seconds) + Double(took.components.attoseconds) / 1e18
        }
        let stoppedWithin = try #require(first.result, "20,000 events were not stored within a minute")
        // Not the file's end: the stop message and the file left in processing/ below show it stopped mid-file.
        // The time, with room: a commit and a checkpoint, each an fsync that other tests' writes on a
        // loaded machine can stretch to seconds.
        #expect(stoppedWithin < 45, "SIGTERM took \(stoppedWithin) s mid-file")
        #expect(first.status == .exited(0))
        #expect(first.log.contains("stopped in the middle of a large file"))
        let view = SpoolView(root: spool)
        #expect(view.processing().count == 1, "left in processing/ to resume")
        let second = try await Daemon.serve(spool: spool) { pid in
            // Liveness, not speed: the debug build alone resumes in seconds, but the whole suite at once on two
            // cores once took over 120 s (a clean clone's `make test`).
            let done = await eventually(timeout: .seconds(300)) { view.done().count == 1 }
            kill(pid, SIGTERM)
            return done
        }
        #expect(second.result)
        #expect(try Self.stored(spool) == 300_000, "every record once")
    }

    @Test func aSignalFromOutsideIsNoCrashOfTheFileInHand() async throws {
        let dir = TempDir("outside-abort")
        defer { dir.cleanup() }
        let spool = dir.path + "/spool"
        let text = await offThePool { Self.bigFile() }
        let first = try await Daemon.serve(spool: spool, arguments: ["--chunk-commit-ms", "200"]) { pid in
            try await waitUntilServing(spool)
            try dropLikeRsync(text, into: spool + "/inbox/appointments", name: "big.ndjson")
            let events = RowCount(spool: spool, "SELECT count(*) FROM appointment_events")
            // What systemd sends when the watchdog starves, mid-file.
            guard await signal(pid, SIGABRT, when: { events() >= 20_000 }) != nil else { return false }
            return await eventually(timeout: .seconds(30)) { CrashGuardTests.ended(pid) }
        }
        #expect(SpoolView(root: spool).processing().count == 1, "the signal came after the file was done")
        #expect(first.result)
        #expect(CrashGuardTests.markerLines(spool).isEmpty, "an outside signal named the file in hand")
        let second = try await Daemon.serve(spool: spool) { pid in
            let done = await eventually(timeout: .seconds(120)) { SpoolView(root: spool).done().count == 1 }
            kill(pid, SIGTERM)
            return done
        }
        #expect(second.result)
        #expect(!second.log.contains("crashed"), "\(second.log.suffix(2000))")
        #expect(try Self.stored(spool) == 300_000)
    }
}
