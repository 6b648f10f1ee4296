import Foundation
import GRDB
import Subprocess
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Transient trouble backs off exponentially, the attempt count kept while a retry waits (it was lost
/// when a retry fell due: a file was retried every second for ever). The real daemon, its database held
/// by another writer for six seconds.
@Suite(.serialized) struct RetryBackoffTests {
    @Test func aFileKeptWaitingByABusyDatabaseIsRetriedWithAGrowingBackoffThenStoredOnce() async throws {
        let dir = TempDir("backoff")
        defer { dir.cleanup() }
        let spool = dir.path + "/spool"
        let run = try await Daemon.serve(spool: spool, arguments: ["--busy-timeout-ms", "100"]) { pid in
            try await waitUntilServing(spool)
            // Another writer holds the write lock for six seconds after the first attempt: an operator's
            // sqlite3 session, a process of its own (a transaction held from a test task would also hold one
            // of the few threads every test shares, and start late on a busy machine). The session itself
            // drops the file once it holds the lock, then waits for the first attempt in the retry state (a
            // claim's fsyncs on a loaded machine could use up six seconds counted from the drop).
            let staged = dir.file("b.json")
            try Data(event("BUSY-1", "2025-01-10T12:30:00Z").utf8).write(to: URL(fileURLWithPath: staged))
            let firstAttempt = dir.file("first-attempt.sh")
            try """
            i=0
            until grep -q '"attempts":1' '\(spool)/processing/retrying.json' 2>/dev/null || [ $i -ge 1200 ]; do
              sleep 0.05; i=$((i+1))
            done
            """.write(toFile: firstAttempt, atomically: true, encoding: .utf8)
            let operatorSession = Task {
                try await Subprocess.run(
                    .name("sqlite3"),
                    arguments: [
                        spool + "/carespool.sqlite3", "BEGIN IMMEDIATE;",
                        ".shell mv '\(staged)' '\(spool)/inbox/appointments/b.json'", ".shell sh '\(firstAttempt)'",
                        ".shell sleep 6", "COMMIT;",
                    ],
                    output: .discarded,
                    error: .string(limit: 1 << 16)
                )
            }
            let session = try await operatorSession.value
            #expect(session.terminationStatus == .exited(0), "\(session.standardError)")
            let view = SpoolView(root: spool)
            let done = await eventually(timeout: .seconds(30)) { view.done().count == 1 }
            kill(pid, SIGTERM)
            return done
        }
        #expect(run.result)
        // Attempts numbered 1, 2, 3 … (a lost count says 1 every time), at 1 s, 2 s, 4 s: over six seconds
        // no more than four retries (a retry every second would be six or more).
        let attempts = run.log.split(separator: "\n").filter { $0.contains("transient trouble") }.compactMap { line in
            line.split(separator: " ").first { $0.hasPrefix("retry.attempt=") }.map { String($0.dropFirst(14)) }
        }
        #expect(attempts.count >= 2 && attempts.count <= 4, "\(attempts)")
        #expect(attempts == (1...attempts.count).map(String.init), "\(attempts)")
        let stored = try await SpoolView(root: spool).database().read { db in
            try Int.fetchOne(db, sql: "SELECT count(*) FROM appointment_events")
        }
        #expect(stored == 1)
    }
}
