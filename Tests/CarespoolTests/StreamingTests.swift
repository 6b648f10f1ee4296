import Foundation
import GRDB
import Subprocess
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Peak resident memory (VmHWM) of a process, in bytes.
func peakResidentBytes(_ pid: pid_t) -> Int? {
    guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
    for line in status.split(separator: "\n") where line.hasPrefix("VmHWM:") {
        let kilobytes = line.split(separator: " ").compactMap { Int($0) }.first
        return kilobytes.map { $0 * 1024 }
    }
    return nil
}

/// Large NDJSON files stream through the real daemon: bounded memory, chunked commits, crash-safe counts.
@Suite(.serialized) struct StreamingTests {
    /// `count` Zoom events of about `padding` bytes each, as one NDJSON text; every `badEvery`th line broken.
    static func export(count: Int, padding: Int = 0, badEvery: Int = 0) -> String {
        var out = ""
        out.reserveCapacity(count * (260 + padding))
        let pad = String(repeating: "x", count: padding)
        for n in 0..<count {
            if badEvery > 0 && n % badEvery == badEvery - 1 {
                out += "{\"event\":\"meeting.participant_joined\",\"event_ts\":\(n)\n"
                continue
            }
            out += "{\"event\":\"meeting.participant_joined\",\"event_ts\":\(1_700_000_000_000 + n),\"payload\":"
            out += "{\"account_id\":\"acc\",\"object\":{\"id\":\(80_000_000_000 + n % 500),\"uuid\":\"v\(n % 500)==\","
            out +=
                "\"participant\":{\"user_id\":\"u\(n)\",\"user_name\":\"P\(n)\",\"join_time\":\"2024-01-01T10:00:00Z\"},"
            out += "\"topic\":\"\(pad)\"}}}\n"
        }
        return out
    }

    @Test func aFiftyMegabyteExportStreamsInBoundedMemory() async throws {
        let dir = TempDir("stream")
        defer { dir.cleanup() }
        let spool = dir.path + "/spool"
        let count = 100_000
        let text = Self.export(count: count, padding: 270)
        #expect(text.utf8.count > 50_000_000)
        let staged = dir.file("export.ndjson")
        try Data(text.utf8).write(to: URL(fileURLWithPath: staged))
        let run = try await Daemon.serve(spool: spool) { pid in
            try await waitUntilServing(spool)
            let view = SpoolView(root: spool)
            #expect(rename(staged, spool + "/inbox/zoom/export.ndjson") == 0)
            let started = ContinuousClock.now
            let finished = await eventually(timeout: .seconds(240)) { view.done("zoom").count == 1 }
            let elapsed = ContinuousClock.now - started
            let peak = peakResidentBytes(pid)
            kill(pid, SIGTERM)
            return (finished, peak, elapsed)
        }
        #expect(run.result.0)
        let peak = try #require(run.result.1)
        // Flat whatever the file's size: ~40 MiB of binary and chunks, plus the writer's page cache (an
        // eighth of the memory budget, 32 MiB at the default).
        #expect(peak < 96 << 20, "peak resident memory \(peak / (1 << 20)) MiB")
        print(
            "streaming test: \(count) events, \(text.utf8.count >> 20) MiB, peak RSS \(peak >> 20) MiB, \(run.result.2)"
        )
        let (stored, rows) = try await SpoolView(root: spool).database().read { db in
            (
                try Int.fetchOne(db, sql: "SELECT stored FROM files WHERE kind = 'zoom'"),
                try Int.fetchOne(db, sql: "SELECT count(*) FROM zoom_events")
            )
        }
        #expect(stored == count)
        #expect(rows == count)
    }

    /// Found by the torture campaign (a 2 GB sparse file was read whole: 6 GiB resident): a file over
    /// the whole-file limit that is not NDJSON is rejected unread, with the reason, in bounded memory;
    /// an endless line in an NDJSON file is cut and rejected, and the lines after it are stored.
    @Test func aHugeFileThatIsNotNDJSONIsRejectedUnreadAndAnEndlessLineIsCut() async throws {
        let dir = TempDir("huge")
        defer { dir.cleanup() }
        let spool = dir.path + "/spool"
        let run = try await Daemon.serve(spool: spool) { pid in
            try await waitUntilServing(spool)
            let inbox = spool + "/inbox/appointments"
            let fd = open(inbox + "/.zeros.json", O_WRONLY | O_CREAT, 0o644)
            ftruncate(fd, 200 << 20)  // 200 MiB of zeros, sparse
            close(fd)
            rename(inbox + "/.zeros.json", inbox + "/zeros.json")
            // 70 MiB on disk in one line that is no JSON value: over the whole-file limit (64 MiB).
            try dropLikeRsync(String(repeating: "x", count: 70 << 20), into: inbox, name: "big.json")
            // 20 MiB in one line between two good lines.
            var text = event("E1", "2025-01-10T12:30:00Z") + "\n{\"notes\":\""
            text += String(repeating: "x", count: 20 << 20) + "\"}\n" + event("E2", "2025-01-10T12:30:00Z") + "\n"
            try dropLikeRsync(text, into: inbox, name: "endless.ndjson")
            let view = SpoolView(root: spool)
            let finished = await eventually(timeout: .seconds(60)) { view.done().count + view.failed().count == 3 }
            let peak = peakResidentBytes(pid)
            kill(pid, SIGTERM)
            return (finished, peak)
        }
        #expect(run.result.0)
        #expect((run.result.1 ?? .max) < 200 << 20, "peak RSS \(run.result.1 ?? 0)")
        let view = SpoolView(root: spool)
        let sidecar = try #require(view.sidecars().first { $0.hasSuffix("big.json.error.json") })
        let reason = try String(contentsOfFile: spool + "/failed/appointments/" + sidecar, encoding: .utf8)
        #expect(reason.contains("is not read; send large data one record per line"), "\(reason)")
        // Size before work: the sparse file (nothing on disk) is rejected before a byte is read or hashed.
        let sparse = try #require(view.sidecars().first { $0.hasSuffix("zeros.json.error.json") })
        let why = try String(contentsOfFile: spool + "/failed/appointments/" + sparse, encoding: .utf8)
        #expect(why.contains("a sparse file (209715200 bytes long"), "\(why)")
        let stored = try await view.database().read { db in
            try String.fetchAll(db, sql: "SELECT appointment_id FROM appointment_events ORDER BY 1")
        }
        #expect(stored == ["E1", "E2"])
    }

    @Test func aStreamedFileWithBadLinesIsPartialAndItsRejectedFileHasExactlyThoseLines() async throws {
        let dir = TempDir("stream")
        defer { dir.cleanup() }
        let spool = dir.path + "/spool"
        // A bad last line with its line end is a bad record; without one it would be an upload cut short
        // (IntakeDaemonTests.anUploadCutMidRecordIsRejectedWholeAndItsResendIsStored).
        let text =
            Self.export(count: 5_000, badEvery: 1_000) + "{\"event\":\"meeting.started\",\"event_ts\":1,\"pay\n"
        let run = try await Daemon.serve(spool: spool, arguments: ["--stream-threshold", "4096"]) { pid in
            try await waitUntilServing(spool)
            let view = SpoolView(root: spool)
            try dropLikeRsync(text, into: spool + "/inbox/zoom", name: "export.ndjson")
            let finished = await eventually(timeout: .seconds(60)) { view.done("zoom").count == 1 }
            kill(pid, SIGTERM)
            return finished
        }
        #expect(run.result)
        let view = SpoolView(root: spool)
        let rejectedName = try #require(view.sidecars("zoom").first { $0.hasSuffix(".rejected.ndjson") })
        let rejected = try String(contentsOfFile: spool + "/failed/zoom/" + rejectedName, encoding: .utf8)
        #expect(rejected.split(separator: "\n").count == 6)
        let row = try await view.database().read { db in
            try Row.fetchOne(db, sql: "SELECT outcome, stored, rejected, duplicates FROM files WHERE kind = 'zoom'")
        }
        #expect(row?["outcome"] == "partial")
        #expect(row?["stored"] == 4_995)
        #expect(row?["rejected"] == 6)
        #expect(row?["duplicates"] == 0)
    }

    /// A large JSON array streams element by element, whatever its line breaks: a pretty-printed intake
    /// array with a record the schema refuses and one that is not JSON is partial, its two bad records
    /// in the `.rejected.ndjson` sidecar, and so are the same records as intake NDJSON (streamed too,
    /// no longer read whole); a one-line appointments array is every event (it was read as one NDJSON
    /// line, a single record that is not an object, and rejected).
    @Test func aLargeJSONArrayStreamsRecordByRecordWhateverItsLayout() async throws {
        let dir = TempDir("array")
        defer { dir.cleanup() }
        let spool = dir.path + "/spool"
        var intake: [String] = []
        for n in 1...300 {
            let mrn = n == 100 ? "" : "M\(n)"
            let first = n == 200 ? "tru" : "\"F\(n)\""
            intake.append(
                "  {\n    \"mrn\": \"\(mrn)\", \"first_name\": \(first), \"last_name\": \"L\",\n"
                    + "    \"birth_date\": \"1980-01-01\", \"visit_account_number\": \"V\(n)\", \"visit_date\": \"2025-01-01\"\n  }"
            )
        }
        let intakeText = "[\n" + intake.joined(separator: ",\n") + "\n]\n"
        // The same records as NDJSON, one per line, under other visit numbers.
        let ndjson =
            intake.map { $0.replacingOccurrences(of: "\n", with: "").replacingOccurrences(of: "\"V", with: "\"N") }
            .joined(separator: "\n") + "\n"
        let events = (1...3_000).map { event("A\($0)", "2025-01-10T12:30:00Z") }
        let appointmentsText = "[" + events.joined(separator: ",") + "]"
        #expect(intakeText.utf8.count > 4096 && appointmentsText.utf8.count > 4096)
        let run = try await Daemon.serve(spool: spool, arguments: ["--stream-threshold", "4096"]) { pid in
            try await waitUntilServing(spool)
            let view = SpoolView(root: spool)
            try dropLikeRsync(intakeText, into: spool + "/inbox/intake", name: "patients.json")
            try dropLikeRsync(appointmentsText, into: spool + "/inbox/appointments", name: "events.json")
            let firstTwo = await eventually(timeout: .seconds(60)) {
                view.done("intake").count == 1 && view.done("appointments").count == 1
            }
            try dropLikeRsync(ndjson, into: spool + "/inbox/intake", name: "patients.ndjson")
            let finished = await eventually(timeout: .seconds(60)) { firstTwo && view.done("intake").count == 2 }
            kill(pid, SIGTERM)
            return finished
        }
        #expect(run.result)
        let view = SpoolView(root: spool)
        let rejectedNames = view.sidecars("intake").filter { $0.hasSuffix(".rejected.ndjson") }.sorted()
        #expect(rejectedNames.count == 2)
        for name in rejectedNames {
            let rejected = try String(contentsOfFile: spool + "/failed/intake/" + name, encoding: .utf8)
            let lines = rejected.split(separator: "\n")
            let prefix = name.contains("patients.json") ? "V" : "N"
            #expect(lines.count == 2)
            #expect(lines.first?.contains("\"\(prefix)100\"") == true && lines.last?.contains("\(prefix)200") == true)
        }
        let (intakeRow, appointmentsRow, visits) = try await view.database().read { db in
            (
                try Row.fetchOne(
                    db,
                    sql: "SELECT outcome, stored, rejected, report FROM files WHERE original_name = 'patients.json'"
                ),
                try Row.fetchOne(db, sql: "SELECT outcome, stored FROM files WHERE kind = 'appointments'"),
                try Int.fetchOne(db, sql: "SELECT count(*) FROM visits")
            )
        }
        #expect(intakeRow?["outcome"] == "partial")
        #expect(intakeRow?["stored"] == 298)
        #expect(intakeRow?["rejected"] == 2)
        let report: String = intakeRow?["report"] ?? ""
        #expect(
            report.contains(
                "\"record\":200,\"line\":798,\"pointer\":null,\"message\":\"not valid JSON: invalid literal (line 799, column 37)\""
            ),
            "\(report)"
        )
        #expect(visits == 2 * 298)
        #expect(appointmentsRow?["outcome"] == "accepted")
        #expect(appointmentsRow?["stored"] == 3_000)
    }

    /// A 25 MB JSON array is read in bounded memory (read whole, it took about eleven times its size).
    @Test func aLargeJSONArrayIsReadInBoundedMemory() async throws {
        let dir = TempDir("array-big")
        defer { dir.cleanup() }
        let spool = dir.path + "/spool"
        let count = 60_000
        var text = "["
        text.reserveCapacity(count * 430)
        let notes = String(repeating: "n", count: 300)
        for n in 0..<count {
            if n > 0 { text += ",\n" }
            text += event("B\(n)", "2025-01-10T12:30:00Z", notes: notes)
        }
        text += "]"
        #expect(text.utf8.count > 25_000_000)
        let staged = dir.file("events.json")
        try Data(text.utf8).write(to: URL(fileURLWithPath: staged))
        let run = try await Daemon.serve(spool: spool) { pid in
            try await waitUntilServing(spool)
            #expect(rename(staged, spool + "/inbox/appointments/events.json") == 0)
            let finished = await eventually(timeout: .seconds(240)) { SpoolView(root: spool).done().count == 1 }
            let peak = peakResidentBytes(pid)
            kill(pid, SIGTERM)
            return (finished, peak)
        }
        #expect(run.result.0)
        let peak = try #require(run.result.1)
        // Flat whatever the file's size: ~40 MiB of binary and chunks, plus the writer's page cache (an
        // eighth of the memory budget, 32 MiB at the default).
        #expect(peak < 96 << 20, "peak resident memory \(peak >> 20) MiB")
        let stored = try await SpoolView(root: spool).database().read { db in
            try Int.fetchOne(db, sql: "SELECT count(*) FROM appointment_events")
        }
        #expect(stored == count)
    }

    @Test func killMinus9MidStreamThenRestartStoresEveryEventOnceAndCountsThemOnce() async throws {
        let dir = TempDir("stream")
        defer { dir.cleanup() }
        let count = 40_000
        let text = await offThePool { Self.export(count: count) }
        // Each attempt a fresh spool and the file dropped anew: the kill comes from a thread of its own as
        // soon as 4,000 events are committed (every 100 ms), but a fast daemon may still finish first.
        let spool = try await killMidFile(
            in: dir,
            kind: "zoom",
            count: "SELECT count(*) FROM zoom_events",
            atLeast: 4_000,
            arguments: ["--stream-threshold", "4096", "--chunk-commit-ms", "100"]
        ) { try dropLikeRsync(text, into: $0 + "/inbox/zoom", name: "export.ndjson") }
        let view = SpoolView(root: spool)
        #expect(
            try await finishAfterRestart(
                spool,
                kind: "zoom",
                arguments: ["--stream-threshold", "4096"],
                timeout: .seconds(120)
            )
        )
        let (row, events, received, inserted) = try await view.database().read { db in
            (
                try Row.fetchOne(db, sql: "SELECT outcome, stored, duplicates FROM files"),
                try Int.fetchOne(db, sql: "SELECT count(*) FROM zoom_events"),
                try Int.fetchOne(db, sql: "SELECT sum(received) FROM zoom_counters"),
                try Int.fetchOne(db, sql: "SELECT sum(inserted) FROM zoom_counters")
            )
        }
        #expect(row?["outcome"] == "accepted")
        #expect(row?["stored"] == count)
        #expect(row?["duplicates"] == 0)
        #expect(events == count)
        #expect(received == count)
        #expect(inserted == count)
    }
}
