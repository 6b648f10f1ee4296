import Foundation
import GRDB
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The memory budget, tried through the real daemon as a hostile partner would: inputs whose parsed form
/// is many times their size (an array of `1,`: a record every two bytes; `{}`: five problems a record;
/// values nested inside one document), dropped together so that one batch would hold them all. Before
/// the budget, one 8 MB array of `1,` took the daemon to 3.9 GB.
@Suite(.serialized) struct MemoryBudgetTests {
    @Test func inputsThatSwellWhenParsedStayWithinTheBudgetAndTheFilesBesideThemGoOn() async throws {
        let dir = TempDir("budget")
        defer { dir.cleanup() }
        let spool = dir.path + "/spool"
        let inbox = spool + "/inbox/appointments"
        let ones = "[" + String(repeating: "1,", count: 399_999) + "1]"  // 800 KB, 400,000 records
        let empty = "[" + String(repeating: "{},", count: 99_999) + "{}]"  // 300 KB, 100,000 records
        let lines = String(repeating: "1\n", count: 300_000)  // 600 KB of NDJSON
        // One document of 700 KB whose values are two bytes each: over the record limit of a 64 MiB budget.
        let nested = "{\"a\":[" + String(repeating: "[1],", count: 175_000) + "1]}"
        // Many small files of many records each: together far more records than one part may hold.
        let small = "[" + String(repeating: "1,", count: 1_499) + "1]"
        let run = try await Daemon.serve(spool: spool, arguments: ["--memory-budget", "64"]) { pid in
            try await waitUntilServing(spool)
            // Written first under dot names (skipped), then renamed at once: claimed in one batch.
            let files =
                [("ones.json", ones), ("empty.json", empty), ("lines.ndjson", lines), ("nested.json", nested)]
                + (0..<60).map { ("small\($0).json", small) }
                + [("ordinary.json", event("ORD-1", "2025-01-10T12:30:00Z"))]
            for (name, text) in files {
                try Data(text.utf8).write(to: URL(fileURLWithPath: inbox + "/." + name))
            }
            for (name, _) in files { #expect(rename(inbox + "/." + name, inbox + "/" + name) == 0) }
            let view = SpoolView(root: spool)
            let finished = await eventually(timeout: .seconds(240)) {
                view.done().count + view.failed().count == files.count
            }
            let peak = peakResidentBytes(pid)
            kill(pid, SIGTERM)
            return (finished, peak)
        }
        #expect(run.result.0, "every file finished")
        let peak = try #require(run.result.1)
        print("memory budget test: 64 MiB budget, peak RSS \(peak >> 20) MiB")
        // The debug binary itself resides in about 40 MiB; the 64 MiB budget plans the work on top.
        #expect(peak < 128 << 20, "peak resident memory \(peak >> 20) MiB")
        let view = SpoolView(root: spool)
        #expect(view.done().contains { $0.hasSuffix("--ordinary.json") })
        // The one document over the record limit is refused with its reason, never parsed.
        let sidecar = try #require(view.sidecars().first { $0.hasSuffix("nested.json.error.json") })
        let reason = try String(contentsOfFile: spool + "/failed/appointments/" + sidecar, encoding: .utf8)
        #expect(
            reason.contains("the record is over the record limit of 262144 bytes (memory_budget / 256): not parsed"),
            "\(reason)"
        )
        // Every record of the others was judged: the rejected sidecars hold one line per record.
        let rejected = try await view.database().read { db in
            try Int.fetchOne(db, sql: "SELECT sum(rejected) FROM files WHERE original_name LIKE 'ones.json'")
        }
        #expect(rejected == 400_000)
        let stored = try await view.database().read { db in
            try Int.fetchOne(db, sql: "SELECT count(*) FROM appointment_events")
        }
        #expect(stored == 1)
    }

    /// The bytes process `pid` has read by read(2) and the like (`rchar` of /proc/<pid>/io).
    static func bytesRead(_ pid: pid_t) -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/io", encoding: .utf8) else { return nil }
        let line = text.split(separator: "\n").first { $0.hasPrefix("rchar:") }
        return line.flatMap { Int($0.dropFirst(6).trimmingCharacters(in: .whitespaces)) }
    }

    /// Size before work, for a file with its blocks allocated but never written (fallocate: free for its
    /// sender, zeros to read): refused at its first NUL byte, not hashed first in full (a 2 GB one held
    /// every inbox for 8 s), and the file behind it goes on at once.
    @Test func aPreallocatedFileOfZerosIsRefusedAtItsFirstBytesNotHashedFirst() async throws {
        let dir = TempDir("budget-zeros")
        defer { dir.cleanup() }
        let spool = dir.path + "/spool"
        let staged = dir.file("zeros.ndjson")
        let fd = open(staged, O_CREAT | O_WRONLY, 0o644)
        #expect(fd >= 0 && posix_fallocate(fd, 0, 2 << 30) == 0)
        close(fd)
        let run = try await Daemon.serve(spool: spool) { pid in
            try await waitUntilServing(spool)
            let readBefore = Self.bytesRead(pid)
            let started = ContinuousClock.now
            #expect(rename(staged, spool + "/inbox/appointments/zeros.ndjson") == 0)
            try dropLikeRsync(
                event("Z1", "2025-01-10T12:30:00Z"),
                into: spool + "/inbox/appointments",
                name: "after.json"
            )
            let view = SpoolView(root: spool)
            let finished = await eventually(timeout: .seconds(60)) {
                view.failed().count == 1 && view.done().count == 1
            }
            let elapsed = ContinuousClock.now - started
            let read = Self.bytesRead(pid).map { $0 - (readBefore ?? 0) }
            kill(pid, SIGTERM)
            return (finished, elapsed, read)
        }
        #expect(run.result.0)
        // What was read, by the kernel's count (the file is 2 GiB; its verdict needs its first bytes): a
        // measure no busy machine stretches. And the time, with room for the fsyncs of two verdicts on a
        // machine busy with other writers (the bug held every inbox 8 s; its read would be 2 GiB).
        let read = try #require(run.result.2, "/proc/<pid>/io unreadable")
        #expect(read < 64 << 20, "the daemon read \(read >> 20) MiB")
        #expect(run.result.1 < .seconds(45), "\(run.result.1)")
        let view = SpoolView(root: spool)
        let sidecar = try #require(view.sidecars().first { $0.hasSuffix("zeros.ndjson.error.json") })
        let reason = try String(contentsOfFile: spool + "/failed/appointments/" + sidecar, encoding: .utf8)
        #expect(reason.contains("a NUL byte at byte 0: not JSON or CSV text"), "\(reason)")
    }

    /// Rows near the record limit: a streamed CSV chunk is committed at `batchBytes` of rows, not only at
    /// 2,000 rows (rows of a megabyte made chunks of 2 GB: 1.5 GB of RSS for a 1.5 GB file), and a row
    /// over the limit is rejected with its line.
    @Test func wideCSVRowsAreCommittedInChunksOfBoundedBytes() async throws {
        let dir = TempDir("budget-csv")
        defer { dir.cleanup() }
        let spool = dir.path + "/spool"
        let wide = String(repeating: "r", count: 200_000)
        var text = intakeHeader + "\n"
        for n in 0..<400 { text += "MRN\(n),Zoë,Müller,1980-01-01,VAN\(n),2025-03-01,\"\(wide)\"\n" }
        text += "MRN9,Ana,Núñez,1980-01-01,VAN9999,2025-03-01,\"" + String(repeating: "x", count: 300_000) + "\"\n"
        let staged = dir.file("wide.csv")
        try Data(text.utf8).write(to: URL(fileURLWithPath: staged))
        let run = try await Daemon.serve(spool: spool, arguments: ["--memory-budget", "64"]) { pid in
            try await waitUntilServing(spool)
            #expect(rename(staged, spool + "/inbox/intake/wide.csv") == 0)
            let view = SpoolView(root: spool)
            let finished = await eventually(timeout: .seconds(120)) {
                view.done("intake").count + view.failed("intake").count == 1
            }
            let peak = peakResidentBytes(pid)
            kill(pid, SIGTERM)
            return (finished, peak)
        }
        #expect(run.result.0)
        let peak = try #require(run.result.1)
        print("wide CSV rows: 80 MB, 64 MiB budget, peak RSS \(peak >> 20) MiB")
        #expect(peak < 128 << 20, "peak resident memory \(peak >> 20) MiB")
        let report = try await SpoolView(root: spool).database().read { db in
            try String.fetchOne(db, sql: "SELECT report FROM files WHERE original_name = 'wide.csv'")
        }
        #expect(report?.contains("record longer than 262144 bytes") == true, "\(report ?? "")")
    }

    /// One large file does not hold up the others for its whole time: between its chunks, the small files
    /// that became ready are claimed and committed (a 64 MB file of tiny records held a one-record file
    /// for 21 s, a 1 GB one would have held every inbox for minutes).
    @Test func aSmallFileDroppedBesideALargeOneIsDoneLongBeforeIt() async throws {
        let dir = TempDir("budget-beside")
        defer { dir.cleanup() }
        let spool = dir.path + "/spool"
        let staged = dir.file("big.ndjson")
        try Data(String(repeating: "{}\n", count: 1_500_000).utf8).write(to: URL(fileURLWithPath: staged))
        let run = try await Daemon.serve(spool: spool) { pid in
            try await waitUntilServing(spool)
            let view = SpoolView(root: spool)
            #expect(rename(staged, spool + "/inbox/appointments/big.ndjson") == 0)
            // Once the big one is being streamed:
            _ = await eventually(timeout: .seconds(20)) { !view.names("processing/appointments").isEmpty }
            let dropped = ContinuousClock.now
            try dropLikeRsync(
                event("BESIDE", "2025-01-10T12:30:00Z"),
                into: spool + "/inbox/appointments",
                name: "s.json"
            )
            let small = await eventually(timeout: .seconds(60)) { view.done().contains { $0.hasSuffix("--s.json") } }
            let waited = ContinuousClock.now - dropped
            let bigStillInHand =
                !view.done().contains { $0.hasSuffix("--big.ndjson") }
                && !view.failed().contains { $0.hasSuffix("--big.ndjson") }
            let big = await eventually(timeout: .seconds(240)) {
                view.failed().contains { $0.hasSuffix("--big.ndjson") }
            }
            kill(pid, SIGTERM)
            return (small, waited, bigStillInHand, big)
        }
        #expect(run.result.0 && run.result.3)
        print("small file beside a 4.5 MB file of 1,500,000 records: done after \(run.result.1)")
        #expect(run.result.2, "the small file was done only with the big one")
        // Within the interleave's reach (a second between chunks), with room for the fsyncs of a machine busy
        // with other writers; that it came first is shown by the big file still in hand.
        #expect(run.result.1 < .seconds(45), "\(run.result.1)")
    }

    /// A small file of many lines whose first line is no JSON value (NDJSON after a blank line, a CSV in a
    /// JSON inbox): counted by its lines it went to streaming, which read it as one document, which counted
    /// its lines again — a 7.5 KB file recursed until the stack overflowed, and again at every start. It is
    /// streamed once, its lines judged, and the daemon lives on.
    @Test func aSmallFileOfManyLinesAfterABadFirstLineIsStreamedOnce() async throws {
        let dir = TempDir("budget-loop")
        defer { dir.cleanup() }
        let spool = dir.path + "/spool"
        let text = "\n" + String(repeating: "{}\n", count: 2_500) + event("LOOP-1", "2025-01-10T12:30:00Z") + "\n"
        let run = try await Daemon.serve(spool: spool) { pid in
            try await waitUntilServing(spool)
            try dropLikeRsync(text, into: spool + "/inbox/appointments", name: "lines.ndjson")
            try dropLikeRsync(
                "mrn,first_name\n" + String(repeating: "a,b\n", count: 2_500),
                into: spool + "/inbox/appointments",
                name: "table.csv"
            )
            let view = SpoolView(root: spool)
            let finished = await eventually(timeout: .seconds(60)) { view.done().count + view.failed().count == 2 }
            let alive = kill(pid, 0) == 0
            kill(pid, SIGTERM)
            return (finished, alive)
        }
        #expect(run.result.0 && run.result.1, "\(run.status) \(run.log.suffix(2000))")
        let stored = try await SpoolView(root: spool).database().read { db in
            try String.fetchAll(db, sql: "SELECT appointment_id FROM appointment_events")
        }
        #expect(stored == ["LOOP-1"])
    }

    /// A streamed record over the record limit is rejected with its size and line, and the records
    /// around it are stored: nothing of it is parsed.
    @Test func aStreamedRecordOverTheLimitIsRejectedWithItsLineAndTheOthersStored() async throws {
        let dir = TempDir("budget-line")
        defer { dir.cleanup() }
        let spool = dir.path + "/spool"
        let big = "{\"a\":[" + String(repeating: "1,", count: 400_000) + "1]}"
        let text =
            event("L1", "2025-01-10T12:30:00Z") + "\n" + big + "\n" + event("L2", "2025-01-10T12:30:00Z") + "\n"
        let run = try await Daemon.serve(spool: spool, arguments: ["--memory-budget", "64"]) { pid in
            try await waitUntilServing(spool)
            try dropLikeRsync(text, into: spool + "/inbox/appointments", name: "mixed.ndjson")
            let finished = await eventually(timeout: .seconds(60)) { SpoolView(root: spool).done().count == 1 }
            kill(pid, SIGTERM)
            return finished
        }
        #expect(run.result)
        let view = SpoolView(root: spool)
        let report = try await view.database().read { db in
            try String.fetchOne(db, sql: "SELECT report FROM files WHERE original_name = 'mixed.ndjson'")
        }
        #expect(report?.contains("over the record limit of 262144 bytes") == true, "\(report ?? "")")
        let stored = try await view.database().read { db in
            try String.fetchAll(db, sql: "SELECT appointment_id FROM appointment_events ORDER BY 1")
        }
        #expect(stored == ["L1", "L2"])
    }
}
