import Foundation
import GRDB
import Subprocess
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// DESIGN.md's I1, I3 and I4 with the real binary: kill -9 at random moments while 2,000 files are being
/// processed, restart, and check that every file ended in done/ or failed/ exactly once, and that every
/// valid event is stored exactly once.
@Suite(.serialized) struct CrashTests {
    @Test func killMinus9AtRandomMomentsKeepsEveryInvariant() async throws {
        let dir = TempDir("crash")
        defer { dir.cleanup() }
        let spool = dir.path + "/spool"
        let staging = dir.path + "/staging"
        try FileManager.default.createDirectory(atPath: staging, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(
            atPath: spool + "/inbox/appointments",
            withIntermediateDirectories: true
        )

        // 2,000 files: most with 1-3 good events, every 10th with a bad record too (partial), every 50th
        // unparseable (rejected), every 25th a byte-identical copy of the file 10 before it (duplicate).
        var expectedKeys = Set<String>()
        var texts: [String] = []
        for n in 0..<2_000 {
            var lines: [String] = []
            if n % 25 == 24 {
                texts.append(texts[n - 10])
                continue
            }
            if n % 50 == 17 {
                texts.append("{\"event_type\": [")
                continue
            }
            for k in 0..<(1 + n % 3) {
                let ts = "2025-03-\(String(format: "%02d", 1 + k))T10:00:00Z"
                lines.append(event("C\(n)", ts, type: k == 1 ? "cancelled" : "scheduled", patient: "P\(n)"))
                expectedKeys.insert("C\(n)|2025-03-\(String(format: "%02d", 1 + k))T10:00:00.000000000Z")
            }
            if n % 10 == 3 { lines.append(event("X\(n)", "2025-03-01 10:00")) }
            texts.append(lines.joined(separator: "\n") + "\n")
        }
        for (n, text) in texts.enumerated() {
            try Data(text.utf8).write(to: URL(fileURLWithPath: staging + "/f\(n).ndjson"))
        }
        // Dropped by rename into the inbox while the daemon is killed and restarted again and again.
        var dropped = 0
        var kills: [Int] = []
        var interrupted = 0
        var roundsInterrupted = 0
        for round in 0..<12 {
            let delay = Int.random(in: 20...350)
            kills.append(delay)
            let batch = round < 6 ? 2_000 / 6 + 1 : 0
            let start = dropped
            dropped = min(2_000, dropped + batch)
            let range = start..<dropped
            let run = try await Daemon.serve(spool: spool, arguments: ["--batch-size", "64", "--settle-ms", "100"]) {
                pid in
                for n in range {
                    rename(staging + "/f\(n).ndjson", spool + "/inbox/appointments/f\(n).ndjson")
                    if n == range.lowerBound + range.count / 2 { try await Task.sleep(for: .milliseconds(delay / 2)) }
                }
                if round % 2 == 0 {
                    // Half the kills at a random moment, half as soon as a file is claimed and unfinished
                    // (seen from a thread of its own, which a busy test pool cannot hold back).
                    try await Task.sleep(for: .milliseconds(delay))
                    kill(pid, SIGKILL)
                } else {
                    let view = SpoolView(root: spool)
                    // A round with files waits for one long enough for a slow start on a loaded machine.
                    _ = await signal(
                        pid,
                        SIGKILL,
                        when: { !view.processing().isEmpty },
                        timeout: range.isEmpty ? .seconds(2) : .seconds(20)
                    )
                }
            }
            #expect(run.status == .signaled(SIGKILL) || run.status == .exited(0), "round \(round): \(run.status)")
            let processing = SpoolView(root: spool).processing().count
            interrupted += processing
            if processing > 0 { roundsInterrupted += 1 }
        }
        // The kills must have landed mid-work: files claimed but not finished, found again at restart.
        #expect(interrupted > 0, "no kill interrupted a claimed file; kills after (ms): \(kills)")
        print("crash test: \(roundsInterrupted) of 12 kills left \(interrupted) claimed files in processing/")
        #expect(dropped == 2_000)
        // The last run: no kill; wait until everything is finished.
        let view = SpoolView(root: spool)
        unlink(spool + "/processing/retrying.json")  // written anew by the next start: its readiness sign
        let final = try await Daemon.serve(spool: spool, arguments: ["--settle-ms", "100"]) { pid in
            try await waitUntilServing(spool)
            let finished = await eventually(timeout: .seconds(60)) {
                view.inbox().isEmpty && view.processing().isEmpty && view.done().count + view.failed().count >= 2_000
            }
            kill(pid, SIGTERM)
            return finished
        }
        #expect(final.result, "kills after (ms): \(kills)")
        #expect(final.status == .exited(0))

        // I1: every file in exactly one of done/ or failed/, never lost, never in both.
        let finishedNames = (view.done() + view.failed()).map(SpoolView.original)
        #expect(finishedNames.count == 2_000, "kills after (ms): \(kills)")
        #expect(Set(finishedNames) == Set((0..<2_000).map { "f\($0).ndjson" }))
        #expect(view.inbox().isEmpty && view.processing().isEmpty)
        #expect(view.failed().count == 40, "rejected files: 2000/50")

        // I3: every valid event stored once, none missing; the ledger has one row per file.
        let database = try view.database()
        let (keys, files, distinctNames) = try await database.read { db in
            (
                try String.fetchAll(db, sql: "SELECT appointment_id || '|' || instant FROM appointment_events"),
                try Int.fetchOne(db, sql: "SELECT count(*) FROM files")!,
                try Int.fetchOne(db, sql: "SELECT count(DISTINCT original_name) FROM files")!
            )
        }
        #expect(keys.count == Set(keys).count, "an event stored twice")
        #expect(Set(keys) == expectedKeys, "missing: \(expectedKeys.subtracting(keys).count)")
        #expect(files == 2_000)
        #expect(distinctNames == 2_000)
        // Every failure and every partial file has its .error.json; partial ones their .rejected.ndjson.
        let outcomes = try await database.read { db in
            try Row.fetchAll(db, sql: "SELECT id, original_name, outcome FROM files").map {
                ($0["id"] as String, $0["original_name"] as String, $0["outcome"] as String)
            }
        }
        let sidecars = Set(view.sidecars())
        for (id, name, outcome) in outcomes where outcome == "partial" || outcome == "rejected" {
            #expect(sidecars.contains("\(id)--\(name).error.json"), "\(name) \(outcome)")
            if outcome == "partial" { #expect(sidecars.contains("\(id)--\(name).rejected.ndjson"), "\(name)") }
        }
        #expect(outcomes.filter { $0.2 == "partial" }.count == 200)
        #expect(outcomes.filter { $0.2 == "duplicate" }.count == 80)
        let state = try await database.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM appointments") }
        #expect(state == Set(expectedKeys.map { $0.split(separator: "|")[0] }).count)
    }
}
