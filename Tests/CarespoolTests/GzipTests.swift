import Crypto
import Foundation
import GRDB
import Spool
import Subprocess
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// `bytes` compressed by the system's gzip(1) (no name or time in the header: the same bytes each run).
func gzipped(_ bytes: [UInt8], level: Int = 6) async throws -> [UInt8] {
    let result = try await run(
        .name("gzip"),
        arguments: ["-c", "-n", "-\(level)"],
        input: .array(bytes),
        output: .bytes(limit: 1 << 30),
        error: .discarded
    )
    #expect(result.terminationStatus == .exited(0))
    return result.standardOutput
}

func gzipped(_ text: String) async throws -> [UInt8] { try await gzipped(Array(text.utf8)) }

/// Drops `bytes` into `folder` as rsync does: a dot-temp name in the same folder, then rename.
func dropBytes(_ bytes: [UInt8], into folder: String, name: String) throws {
    let temporary = folder + "/." + name + ".Xa1b2C"
    try Data(bytes).write(to: URL(fileURLWithPath: temporary))
    guard rename(temporary, folder + "/" + name) == 0 else { throw CocoaError(.fileWriteUnknown) }
}

/// Everything `stream` makes of `input`, fed `piece` bytes at a time, then finished.
func inflate(_ input: [UInt8], limits: DecompressionLimits = .init(), piece: Int = 1 << 20) throws -> [UInt8] {
    let stream = GzipStream(limits: limits)
    var out: [UInt8] = []
    var start = 0
    while start < input.count {
        let end = min(input.count, start + piece)
        try stream.feed(input[start..<end]) { out += $0 }
        start = end
    }
    try stream.finish()
    return out
}

/// The gzip stream on its own: members, truncation, corruption and bombs, fed whole and a byte at a time.
@Suite struct GzipStreamTests {
    @Test func oneMemberAndConcatenatedMembersDecompressWholeFedInAnyPieces() async throws {
        let first = Array("mrn,first_name\nM1,Zoë\n".utf8)
        let second = Array("M2,Ana Mar\u{ED}a\n".utf8)
        let one = try await gzipped(first)
        let two = try await gzipped(second)
        for piece in [1, 3, 17, 1 << 20] {
            #expect(try inflate(one, piece: piece) == first)
            #expect(try inflate(one + two, piece: piece) == first + second)
        }
        // An empty member (gzip of nothing) between two is still one stream.
        let empty = try await gzipped([UInt8]())
        #expect(try inflate(one + empty + two) == first + second)
    }

    @Test func aTruncatedStreamNamesWhereItEndsAtEveryCut() async throws {
        let plain = Array(String(repeating: "M1,Zoë,Ñúñez,1980-01-01\n", count: 2_000).utf8)
        let whole = try await gzipped(plain)
        for cut in [2, 5, 10, whole.count / 2, whole.count - 4, whole.count - 1] {
            #expect {
                _ = try inflate(Array(whole.prefix(cut)))
            } throws: { error in
                guard let problem = error as? DecompressionProblem else { return false }
                return problem.offset == Int64(cut) && problem.message.contains("truncated")
                    && problem.message.contains("compressed byte \(cut)")
            }
        }
        // Cut after a whole member: that is a complete stream (gzip(1) says the same).
        let two = whole + whole
        #expect(try inflate(Array(two.prefix(whole.count))) == plain)
        #expect(throws: DecompressionProblem.self) { try inflate(Array(two.prefix(whole.count + 5))) }
    }

    @Test func corruptDataAndTrailingGarbageAreProblemsNamingTheByte() async throws {
        let plain = Array(String(repeating: "{\"a\":1}\n", count: 5_000).utf8)
        var whole = try await gzipped(plain)
        // A flipped byte in the deflate data, or in the CRC-32 trailer: both found.
        for position in [whole.count / 2, whole.count - 6] {
            var bad = whole
            bad[position] ^= 0x55
            #expect {
                _ = try inflate(bad)
            } throws: { error in
                guard let problem = error as? DecompressionProblem else { return false }
                return problem.message.contains("corrupt at compressed byte") && problem.offset <= Int64(bad.count)
            }
        }
        // Bytes after the last member that are no member (a partner's padding, an appended log).
        whole += Array("trailing text".utf8)
        #expect {
            _ = try inflate(whole)
        } throws: { error in
            (error as? DecompressionProblem)?.message.contains("corrupt at compressed byte") == true
        }
        // The magic bytes, then no gzip header.
        #expect {
            _ = try inflate([0x1F, 0x8B, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00])
        } throws: { error in
            (error as? DecompressionProblem)?.message.contains("not a gzip stream") == true
        }
    }

    @Test func zeroPaddingAfterTheLastMemberIsIgnoredAndDataAfterItIsNot() async throws {
        let plain = Array("mrn,first_name\nM1,Zoë\n".utf8)
        let padded = try await gzipped(plain) + [UInt8](repeating: 0, count: 4_000)
        for piece in [1, 7, 1 << 20] { #expect(try inflate(padded, piece: piece) == plain) }
        #expect {
            _ = try inflate(padded + [0x41])
        } throws: { error in
            (error as? DecompressionProblem)?.message.contains("data after the zero padding") == true
        }
    }

    @Test func bombsAreRefusedByRatioOrSizeNamingBothLimitsBeforeTheirEnd() async throws {
        // 64 MiB of one byte: about 65 KB of gzip, a ratio near 1,000.
        let bomb = try await gzipped([UInt8](repeating: 0x41, count: 64 << 20), level: 9)
        var made: Int64 = 0
        let stream = GzipStream(limits: DecompressionLimits())
        #expect {
            try stream.feed(bomb[...]) { made += Int64($0.count) }
        } throws: { error in
            guard let problem = error as? DecompressionProblem else { return false }
            return problem.message.contains("decompression bomb") && problem.message.contains("max_ratio = 200")
                && problem.message.contains("max_decompressed_mib = 16384")
        }
        // Refused soon after the ratio's floor, not at the end of the 64 MiB.
        #expect(made <= DecompressionLimits.ratioFloor + (1 << 20))
        // The size limit on its own: a file that compresses only 2:1 but is larger than allowed.
        var random = SystemRandomNumberGenerator()
        let noisy = (0..<(3 << 20)).map { n in n % 2 == 0 ? UInt8.random(in: 0...255, using: &random) : 0x20 }
        let packed = try await gzipped(noisy)
        #expect {
            _ = try inflate(packed, limits: DecompressionLimits(maxBytes: 2 << 20, maxRatio: 200))
        } throws: { error in
            guard let problem = error as? DecompressionProblem else { return false }
            return problem.message.contains("more than 2097152 bytes") && problem.message.contains("max_ratio = 200")
                && problem.message.contains("max_decompressed_mib = 2")
        }
        // Under both limits, the same file is read.
        #expect(try inflate(packed, limits: DecompressionLimits(maxBytes: 4 << 20, maxRatio: 200)) == noisy)
    }

    @Test func formatsAreToldByMagicBytesNotByName() {
        #expect(Compression.of([0x1F, 0x8B, 0x08]) == .gzip)
        #expect(Compression.of([0x28, 0xB5, 0x2F, 0xFD, 0, 0]) == .unsupported("zstd (magic bytes 28 B5 2F FD)"))
        #expect(Compression.of(Array("BZh91AY&SY".utf8))?.description.contains("bzip2") == true)
        #expect(Compression.of(Array("BZh,mrn\n".utf8)) == nil)  // a CSV header that begins with BZh
        #expect(Compression.of(Array("mrn,first".utf8)) == nil)
        #expect(Compression.of(Array("{\"a\"".utf8)) == nil)
        #expect(Compression.of([0x1F]) == nil)
    }
}

extension Compression {
    var description: String {
        switch self {
        case .gzip: "gzip"
        case .unsupported(let format): format
        }
    }
}

/// Compressed drops through the real daemon: each kind, several members, a truncated file, a bomb and an
/// unsupported format — records, rejects, ledger and outcome exactly as for the plain file.
@Suite(.serialized) struct GzipDaemonTests {
    static func hex(_ bytes: [UInt8]) -> String {
        SHA256.hash(data: bytes).map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
    }

    /// Drops `files` (name, kind, bytes) one after another and waits for each one's verdict.
    func drop(
        _ files: [(name: String, kind: String, bytes: [UInt8])],
        arguments: [String] = []
    ) async throws -> (SpoolView, String) {
        let dir = TempDir("gzip")
        let spool = dir.path + "/spool"
        let view = SpoolView(root: spool)
        let run = try await Daemon.serve(spool: spool, arguments: arguments) { pid in
            try await waitUntilServing(spool)
            var finished = true
            for (index, file) in files.enumerated() {
                try dropBytes(file.bytes, into: spool + "/inbox/" + file.kind, name: file.name)
                let done = await eventually(timeout: .seconds(120)) {
                    ["appointments", "zoom", "intake"].reduce(0) { $0 + view.done($1).count + view.failed($1).count }
                        == index + 1
                }
                finished = finished && done
            }
            kill(pid, SIGTERM)
            return finished
        }
        #expect(run.result)
        #expect(run.status == .exited(0))
        return (view, run.log)
    }

    typealias Ledger = (outcome: String, size: Int, decompressed: Int?, sha256: String, stored: Int, rejected: Int)

    func ledger(_ view: SpoolView, _ name: String) async throws -> Ledger? {
        try await view.database().read { db in
            try Row.fetchOne(
                db,
                sql:
                    "SELECT outcome, size, decompressed_size, sha256, stored, rejected FROM files WHERE original_name = ?",
                arguments: [name]
            ).map { ($0["outcome"], $0["size"], $0["decompressed_size"], $0["sha256"], $0["stored"], $0["rejected"]) }
        }
    }

    @Test func eachKindGzippedEndsExactlyAsItsPlainFileWithTheLedgerOfTheBytesReceived() async throws {
        var intake = intakeCSV(count: 5_000)
        intake += "M9,,Bad,1980-01-01,VX1,2025-03-01,missing first name\n"
        intake += "\"Núñez, M\",José,Ñúñez,1975-06-30,VX2,2025-03-01,\"quoted, with comma\"\n"
        let appointments = (0..<3_000).map { event("A\($0)", "2031-05-06T07:08:09Z") }.joined(separator: "\n") + "\n"
        let pretty =
            "{\n  \"event_type\": \"appointment.scheduled\",\n  \"appointment_id\": \"PRETTY\",\n"
            + "  \"patient_id\": \"P1\",\n  \"timestamp\": \"2031-05-06T07:08:09Z\"\n}\n"
        let zoom =
            (0..<2_000).map { zoomEvent("meeting.started", ts: 1_648_038_806_000 + Int64($0)) }
            .joined(separator: "\n") + "\n"
        let files: [(name: String, kind: String, text: String)] = [
            ("visits-2026-12-01.csv.gz", "intake", intake),
            ("visits-2026-12-01.csv", "intake", intake),
            ("events.ndjson.gz", "appointments", appointments),
            ("pretty.json.gz", "appointments", pretty),
            ("zoom.ndjson.gz", "zoom", zoom),
        ]
        var compressed: [String: [UInt8]] = [:]
        for file in files where file.name.hasSuffix(".gz") { compressed[file.name] = try await gzipped(file.text) }
        let (view, _) = try await drop(
            files.map { ($0.name, $0.kind, compressed[$0.name] ?? Array($0.text.utf8)) }
        )
        // The plain intake file after its gzip twin: the same rows, all duplicates now — the twin stored them.
        let gz = try #require(try await ledger(view, "visits-2026-12-01.csv.gz"))
        let plain = try #require(try await ledger(view, "visits-2026-12-01.csv"))
        #expect(gz.outcome == "partial" && gz.rejected == 1 && gz.stored > 0)
        #expect(gz.size == compressed["visits-2026-12-01.csv.gz"]!.count)
        #expect(gz.decompressed == intake.utf8.count)
        #expect(gz.sha256 == Self.hex(compressed["visits-2026-12-01.csv.gz"]!))
        #expect(plain.decompressed == nil && plain.size == intake.utf8.count && plain.rejected == 1)
        #expect(plain.stored == 0)
        // The rejects: uncompressed CSV, ready to fix and drop again, for the gzip file as for the plain one.
        let rejects = view.sidecars("intake").filter { $0.hasSuffix(".rejected.csv") }
        #expect(rejects.count == 2)
        for name in rejects {
            let text = try String(contentsOfFile: view.root + "/failed/intake/" + name, encoding: .utf8)
            #expect(text.hasPrefix(intakeHeader + ",error,line\n"))
            #expect(text.contains("M9,,Bad,1980-01-01,VX1"))
        }
        let database = try view.database()
        let counts = try await database.read { db in
            (
                try Int.fetchOne(db, sql: "SELECT count(*) FROM visits")!,
                try Int.fetchOne(db, sql: "SELECT count(*) FROM appointment_events")!,
                try Int.fetchOne(db, sql: "SELECT count(*) FROM zoom_events")!,
                try String.fetchOne(db, sql: "SELECT first_name FROM persons WHERE last_name = 'Ñúñez'")
            )
        }
        #expect(counts.0 == 5_001)
        #expect(counts.1 == 3_001)
        #expect(counts.2 == 2_000)
        #expect(counts.3 == "José")
        for name in ["events.ndjson.gz", "pretty.json.gz", "zoom.ndjson.gz"] {
            let row = try #require(try await ledger(view, name))
            #expect(row.outcome == "accepted", "\(name)")
            #expect(row.size == compressed[name]!.count && row.sha256 == Self.hex(compressed[name]!), "\(name)")
        }
        // The file itself stays as received, compressed, in done/.
        let kept = try #require(view.done("intake").first { $0.hasSuffix("visits-2026-12-01.csv.gz") })
        let day = view.names("done/intake")[0]
        let keptBytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: "\(view.root)/done/intake/\(day)/\(kept)")))
        #expect(keptBytes == compressed["visits-2026-12-01.csv.gz"])
    }

    @Test func concatenatedMembersAreOneFileAndTheSameBytesAgainADuplicate() async throws {
        let first = intakeCSV(count: 3_000)
        let rest = String(intakeCSV(count: 2_000, start: 3_000).drop { $0 != "\n" }.dropFirst())
        let both = try await gzipped(first) + (try await gzipped(rest))
        let (view, _) = try await drop([("a.csv.gz", "intake", both), ("again.csv.gz", "intake", both)])
        let row = try #require(try await ledger(view, "a.csv.gz"))
        #expect(row.outcome == "accepted")
        #expect(row.decompressed == first.utf8.count + rest.utf8.count)
        #expect(try await ledger(view, "again.csv.gz")?.outcome == "duplicate")
        let visits = try await view.database().read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM visits")! }
        #expect(visits == 5_000)
    }

    @Test func truncatedCorruptBombAndUnsupportedFilesFailWholeNamingWhyAndTheFilesBehindGoOn() async throws {
        let text = intakeCSV(count: 20_000)
        let whole = try await gzipped(text)
        var corrupt = whole
        corrupt[whole.count / 2] ^= 0x55
        let bomb =
            try await gzipped(intakeHeader + "\n" + String(repeating: "M1,A,B,1980-01-01,V1,2025-03-01,x\n", count: 1))
            + (try await gzipped([UInt8](repeating: 0x20, count: 40 << 20), level: 9))
        let zstd: [UInt8] = [0x28, 0xB5, 0x2F, 0xFD] + Array(text.utf8.prefix(100))
        let after = try await gzipped(intakeCSV(count: 10, start: 900_000))
        let (view, log) = try await drop([
            ("cut.csv.gz", "intake", Array(whole.prefix(whole.count * 2 / 3))),
            ("corrupt.csv.gz", "intake", corrupt),
            ("bomb.csv.gz", "intake", bomb),
            ("visits.csv.zst", "intake", zstd),
            ("twice.csv.gz.gz", "intake", try await gzipped(whole)),
            (
                "events.ndjson.gz", "appointments",
                Array(try await gzipped(event("T", "2031-05-06T07:08:09Z")).prefix(20))
            ),
            ("after.csv.gz", "intake", after),
        ])
        let failed = Set(view.failed("intake").map(SpoolView.original))
        #expect(failed == ["cut.csv.gz", "corrupt.csv.gz", "bomb.csv.gz", "visits.csv.zst", "twice.csv.gz.gz"])
        #expect(view.failed("appointments").map(SpoolView.original) == ["events.ndjson.gz"])
        func reason(_ kind: String, _ name: String) throws -> String {
            let failed = try #require(view.failed(kind).first { SpoolView.original($0) == name })
            let sidecar = try #require(
                view.sidecars(kind).first { $0.hasPrefix(failed.prefix(36)) && $0.hasSuffix(".error.json") }
            )
            return try String(contentsOfFile: view.root + "/failed/\(kind)/" + sidecar, encoding: .utf8)
        }
        #expect(
            try reason("intake", "cut.csv.gz").contains(
                "truncated: the file ends at compressed byte \(whole.count * 2 / 3)"
            )
        )
        #expect(try reason("intake", "corrupt.csv.gz").contains("corrupt at compressed byte"))
        let bombReason = try reason("intake", "bomb.csv.gz")
        #expect(bombReason.contains("decompression bomb") && bombReason.contains("max_ratio = 200"))
        #expect(bombReason.contains("max_decompressed_mib = 16384"))
        #expect(try reason("intake", "visits.csv.zst").contains("compressed as zstd"))
        #expect(
            try reason("intake", "twice.csv.gz.gz").contains("compressed twice: decompressed, the file is gzip again")
        )
        #expect(try reason("appointments", "events.ndjson.gz").contains("truncated"))
        // Nothing of a rejected file is stored: records before the cut do not count.
        let (visits, appointments) = try await view.database().read { db in
            (
                try Int.fetchOne(db, sql: "SELECT count(*) FROM visits")!,
                try Int.fetchOne(db, sql: "SELECT count(*) FROM appointment_events")!
            )
        }
        #expect(visits == 10)
        #expect(appointments == 0)
        #expect(try await ledger(view, "after.csv.gz")?.outcome == "accepted")
        // No value of a record reaches the log.
        #expect(!log.contains("MRN1,") && !log.contains("First1"))
    }

    @Test func theLimitsAreConfiguredAndValidateReadsGzipToo() async throws {
        let dir = TempDir("gzip-config")
        defer { dir.cleanup() }
        let config = dir.path + "/carespool.toml"
        try "[compression]\nmax_decompressed_mib = 1\nmax_ratio = 50\n".write(
            toFile: config,
            atomically: true,
            encoding: .utf8
        )
        let text = intakeCSV(count: 30_000)  // about 2 MiB: over the 1 MiB limit
        let file = dir.path + "/visits.csv.gz"
        try Data(try await gzipped(text)).write(to: URL(fileURLWithPath: file))
        let refused = try await Daemon.command(["validate", "--kind", "intake", "--config", config, file])
        #expect(refused.status == .exited(1))
        #expect(refused.out.contains("file rejected: refused: it decompresses to more than 1048576 bytes"))
        #expect(refused.out.contains("max_decompressed_mib = 1, compression.max_ratio = 50"))
        let read = try await Daemon.command(["validate", "--kind", "intake", file])
        #expect(read.status == .exited(0))
        #expect(read.out.contains("would store 30000"))
        let shown = try await Daemon.command(["config", "check", config])
        #expect(shown.out.contains("[compression]\nmax_decompressed_mib = 1\nmax_ratio = 50\n"))
        try "[compression]\nmax_ratio = 1\n".write(toFile: config, atomically: true, encoding: .utf8)
        let bad = try await Daemon.command(["config", "check", config])
        #expect(bad.status != .exited(0))
        #expect(bad.err.contains("compression.max_ratio"))
    }

    @Test func killMinus9MidGzipFileThenRestartStoresEveryRowOnce() async throws {
        let dir = TempDir("gzip-kill")
        defer { dir.cleanup() }
        let count = 60_000
        let compressed = try await gzipped(await offThePool { intakeCSV(count: count) })
        let spool = try await killMidFile(in: dir, kind: "intake", count: "SELECT count(*) FROM visits", atLeast: 6_000)
        {
            try dropBytes(compressed, into: $0 + "/inbox/intake", name: "visits.csv.gz")
        }
        let view = SpoolView(root: spool)
        #expect(try await finishAfterRestart(spool, kind: "intake", timeout: .seconds(120)))
        let (row, visits) = try await view.database().read { db in
            (
                try Row.fetchOne(db, sql: "SELECT outcome, size, decompressed_size, sha256 FROM files"),
                try Int.fetchOne(db, sql: "SELECT count(*) FROM visits")
            )
        }
        #expect(row?["outcome"] == "accepted")
        #expect(row?["size"] == compressed.count)
        #expect(row?["sha256"] == Self.hex(compressed))
        #expect(visits == count)
    }

    @Test func aGzipDocumentIsReadOnceWhateverItsCompressedSize() async throws {
        // One pretty-printed event, then 60,000 empty gzip members: 1.2 MB on disk, 150 bytes of JSON.
        let pretty =
            "{\n  \"event_type\": \"appointment.scheduled\",\n  \"appointment_id\": \"PADDED\",\n"
            + "  \"patient_id\": \"P1\",\n  \"timestamp\": \"2031-05-06T07:08:09Z\"\n}\n"
        let empty = try await gzipped([UInt8]())
        var padded = try await gzipped(pretty)
        padded.reserveCapacity(padded.count + empty.count * 60_000)
        for _ in 0..<60_000 { padded += empty }
        let (view, log) = try await drop([("padded.json.gz", "appointments", padded)])
        let row = try #require(try await ledger(view, "padded.json.gz"))
        #expect(row.outcome == "accepted")
        #expect(row.size == padded.count && row.decompressed == pretty.utf8.count)
        #expect(row.sha256 == Self.hex(padded))
        #expect(!log.contains("crashed"))
    }

    @Test func aGzipFileCutWhileItsRecordsAreStoredIsPartialCountingWhatIsStored() async throws {
        let dir = TempDir("gzip-cut")
        defer { dir.cleanup() }
        let count = 300_000
        let compressed = try await gzipped(await offThePool { intakeCSV(count: count) })
        var landed: String?
        for attempt in 0..<4 where landed == nil {
            let spool = dir.path + "/spool\(attempt)"
            let view = SpoolView(root: spool)
            let run = try await Daemon.serve(spool: spool, arguments: ["--chunk-commit-ms", "100"]) { pid in
                try await waitUntilServing(spool)
                try dropBytes(compressed, into: spool + "/inbox/intake", name: "visits.csv.gz")
                // Pass 2 has begun once visits are stored: its sender cuts the file in half now.
                let visits = RowCount(spool: spool, "SELECT count(*) FROM visits")
                let cut = await offThePool {
                    guard pollUntil(.seconds(60), { visits() >= 2_000 }) else { return false }
                    guard let name = view.processing("intake").first else { return false }
                    return truncate(spool + "/processing/intake/" + name, off_t(compressed.count / 2)) == 0
                }
                let finished = await eventually(timeout: .seconds(120)) {
                    view.done("intake").count + view.failed("intake").count == 1
                }
                kill(pid, SIGTERM)
                return cut && finished
            }
            #expect(run.status == .exited(0))
            if run.result { landed = spool }
        }
        let spool = try #require(landed, "the cut never landed mid-file")
        let view = SpoolView(root: spool)
        let (row, visits) = try await view.database().read { db in
            (
                try Row.fetchOne(db, sql: "SELECT outcome, stored, rejected, error FROM files"),
                try Int.fetchOne(db, sql: "SELECT count(*) FROM visits")
            )
        }
        let stored: Int = try #require(row?["stored"])
        // What the ledger says is what is stored: the rows before the cut, and the cut one rejected record.
        #expect(row?["outcome"] == "partial")
        #expect(stored == visits && stored > 0 && stored < count)
        #expect(row?["rejected"] == 1)
        let error: String = try #require(row?["error"])
        #expect(error.contains("truncated") && error.contains("the file changed after it was checked"))
    }
}
