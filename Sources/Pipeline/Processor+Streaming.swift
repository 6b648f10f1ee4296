import CMemory
import CSV
import Crypto
import JSONSchema
import Kinds
import Logging
import Spool
import Store
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Large NDJSON files: read in 1 MiB chunks, records committed 2,000 at a time, the ledger row last.
/// Memory stays bounded whatever the file's size. A crash between chunks leaves the file in processing/
/// with some of its records stored under its id; the replay finds them (same file id and record number),
/// counts them stored and writes nothing twice.
extension Engine {
    static let chunkRecords = 2_000
    /// Problems listed in a streamed file's report; beyond that they are counted and the `.rejected`
    /// sidecar has every rejected record.
    static let listedProblems = 1_000

    func processLarge(_ file: Spool.Claimed, claimedAt: Int64) {
        // What the file's chunks freed goes back to the system, not only to malloc's free lists.
        defer { _ = carespool_malloc_trim() }
        // Whatever ends it early, nothing of it stays in an open transaction (committed chunks stay).
        defer { database.rollbackChunks() }
        guard let kind = Kind(rawValue: file.kind) else { return }
        do {
            // Size before work: fstat says how large it is before a byte is read.
            guard let (size64, sparse, links, compression) = spool.sizeBeforeReading(file) else {
                throw SpoolError("read", file.path, ENOENT)
            }
            if sparse || links > 1 {
                // Checked in the batch before; changed since (its sender still holds it): a verdict.
                rejectUnread(
                    file,
                    "the file changed after it was claimed (holes, or other hard links): not read",
                    claimedAt: claimedAt
                )
                return
            }
            // Every pass reads at most this: what its sender adds later is never read.
            var file = file
            file.readLimit = size64
            let size = Int(size64)
            // Pass 0: its first line only (at most 16 MiB), to tell NDJSON, a JSON array, CSV, or one document.
            var firstLine: [UInt8] = []
            do {
                try spool.readChunks(file) { chunk in
                    if let newline = chunk.firstIndex(of: 0x0A) {
                        firstLine += chunk[chunk.startIndex..<newline]
                        throw StopReading()
                    }
                    firstLine += chunk
                    // A first line longer than a record may be is no NDJSON record: enough to judge.
                    if firstLine.count > configuration.recordLimit { throw StopReading() }
                }
            } catch is StopReading {}
            let firstByte = firstLine.first { ![0x20, 0x09, 0x0D, 0xEF, 0xBB, 0xBF].contains($0) }
            // A JSON array is streamed element by element, whatever its line breaks. Another JSON
            // document (one large object) is read whole, so only up to `wholeFileLimit`: a larger one is
            // rejected unread rather than held in memory.
            var tooLarge: RecordProblem?
            let isArray = firstByte == UInt8(ascii: "[")
            // An intake file or a Zoom report is CSV unless it begins like JSON.
            let isCSV = (kind == .intake || kind == .zoomReport) && !isArray && firstByte != UInt8(ascii: "{")
            var readWhole: Bool
            if isArray || isCSV {
                readWhole = false
            } else {
                // Not NDJSON (one large object): read whole, like any other file. The first line is only
                // walked, never parsed into values (16 MiB of `[1],` would be 250 MB of them).
                var line = firstLine[...]
                if line.last == 0x0D { line.removeLast() }
                readWhole = (try? JSONParser.check(Array(line), keepUpTo: 0)) == nil
            }
            // Within the record limit, read whole only what is one JSON document (a pretty-printed object):
            // NDJSON whose first line is bad is streamed, its first line a rejected record. (Read whole,
            // such a file of many lines was counted by its lines, sent back to streaming, and round again:
            // a 7.5 KB file recursed until the stack overflowed.)
            // A gzip file's size says nothing of its records': it is read (decompressed) up to the limit.
            let gzip = compression == .gzip
            if readWhole && (size <= configuration.recordLimit || gzip) {
                var whole: [UInt8] = []
                var fits = true
                var hasher = SHA256()
                do {
                    try spool.readChunks(file, raw: { if gzip { hasher.update(data: $0) } }) { chunk in
                        whole += chunk
                        if whole.count > configuration.recordLimit {
                            fits = false
                            throw StopReading()
                        }
                    }
                } catch is StopReading {}
                let document = whole.starts(with: [0xEF, 0xBB, 0xBF]) ? whole[3...] : whole[...]
                if fits, (try? JSONParser.check(Array(document), keepUpTo: 0)) != nil {
                    // A gzip document is handed over decompressed: read again by the whole-file path, its
                    // compressed bytes (which padding can make any size) would be what is held.
                    if gzip {
                        let digest = hasher.finalize().map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
                        gzipWhole[file.id] = (whole, digest, size)
                    }
                    processWhole(file, claimedAt: claimedAt)
                    return
                }
                readWhole = fits ? false : readWhole
            }
            // Text never holds a NUL byte (JSON forbids it, RFC 4180 has no place for it): a file whose
            // first line does — preallocated zeros (fallocate), a disk image — is refused unread, before
            // a pass over gigabytes of it. So is a CSV file whose header line is longer than a record may be.
            if kind == .zoomReport && !isCSV {
                tooLarge = RecordProblem(
                    record: nil,
                    line: nil,
                    pointer: nil,
                    message:
                        "a Reports API file over \(configuration.wholeLimit) bytes (memory_budget / 256): its pages "
                        + "(at most 300 participants each) are read whole, so drop them as several files"
                )
            } else if gzip, let inner = Compression.of(firstLine.prefix(6)) {
                let format = if case .unsupported(let name) = inner { name } else { "gzip" }
                tooLarge = RecordProblem(
                    record: nil,
                    line: nil,
                    pointer: nil,
                    message: "compressed twice: decompressed, the file is \(format) again; compress it once"
                )
            } else if let nul = firstLine.firstIndex(of: 0) {
                tooLarge = RecordProblem(
                    record: nil,
                    line: 1,
                    pointer: nil,
                    message:
                        "a NUL byte at \(gzip ? "decompressed " : "")byte \(nul): not JSON or CSV text; the file is "
                        + "not read further"
                )
            } else if isCSV && firstLine.count >= configuration.recordLimit {
                tooLarge = RecordProblem(
                    record: nil,
                    line: 1,
                    pointer: nil,
                    message:
                        "header: its line is longer than the record limit of \(configuration.recordLimit) bytes "
                        + "(memory_budget / 256); the file is not read further"
                )
            } else if readWhole {
                tooLarge = RecordProblem(
                    record: nil,
                    line: nil,
                    pointer: nil,
                    message: (gzip
                        ? "file decompresses to more than \(configuration.recordLimit) bytes" : "file is \(size) bytes")
                        + " and its first line is no JSON record of at most "
                        + "\(configuration.recordLimit) bytes (the record limit): not \(kind == .intake ? "CSV, " : "")"
                        + "NDJSON or a JSON array, and a JSON document over the record limit is not read; send large "
                        + "data one record per line or as an array of records"
                )
            }
            // Pass 1, only for a file that will be read: its sha256, and whether its last line is cut short
            // (a CSV or NDJSON upload that died mid-record: rejected whole, nothing stored).
            // A gzip file is decompressed whole in this pass, before a record is stored: one that is corrupt,
            // truncated or a bomb is rejected whole, nothing of it stored (ARCHITECTURE.md, "Compressed files").
            var digest = String(repeating: "0", count: 64)
            var decompressedSize: Int?
            if tooLarge == nil {
                var hasher = SHA256()
                var tail = isArray ? nil : TailCheck(csv: isCSV, limit: configuration.recordLimit)
                var plain = 0
                // A report's dates are read once before a row is stored: one that fits only the other date
                // order refuses the file whole, as when it is read whole (its other dates would be misread).
                let checkDates = isCSV && kind == .zoomReport
                var dateReader = CSVReader(maxRecordBytes: configuration.recordLimit)
                var dates = ZoomReportCSV(times: LocalTimeReader(file.localTimes), fileName: file.originalName)
                do {
                    try spool.readChunks(file, raw: { hasher.update(data: $0) }) { chunk in
                        plain += chunk.count
                        tail?.feed(chunk)
                        if checkDates { dateReader.feed(chunk) { _ = dates.take($0) } }
                        try chunkDone()
                    }
                    if checkDates { dateReader.finish { _ = dates.take($0) } }
                    tooLarge = tail?.problem(
                        headerWidth: isCSV && kind == .intake ? csvWidth(header: firstLine) : nil
                    )
                    if tooLarge == nil, checkDates, let mismatch = dates.otherOrder {
                        tooLarge = RecordProblem(
                            record: nil,
                            line: mismatch.line,
                            pointer: nil,
                            message: mismatch.problem
                                + "; nothing of the file is stored, as its other dates would be misread"
                        )
                    }
                    digest = hasher.finalize().map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
                    if gzip { decompressedSize = plain }
                } catch let problem as DecompressionProblem {
                    // Not read to its end: no digest (zeros, as for any file rejected unread).
                    tooLarge = RecordProblem(record: nil, line: nil, pointer: nil, message: problem.message)
                }
            }
            let receivedAt = Clock.timestamp()
            // Rejected JSON records are NDJSON, an intake file's too when it is JSON.
            let rejectedExtension = kind == .intake && !isCSV ? "ndjson" : kind.rejectedExtension
            let rejectedFile = try spool.temporaryFile(file.id + SpoolName.rejectedSuffix(rejectedExtension))
            // Removed however this ends (once placed as a sidecar, its temporary name is gone already).
            defer { rejectedFile.discard() }
            var totals: FileReport
            if let tooLarge {
                totals = FileReport(outcome: .rejected, errors: [tooLarge])
            } else if let earlier = try database.earlierFile(kind: kind, sha256: digest, excluding: file.id),
                try database.ledgerReport(id: file.id) == nil
            {
                totals = FileReport(outcome: .duplicate, duplicateOf: earlier)
            } else if isCSV && kind == .zoomReport {
                totals = try streamReportCSV(file, rejected: rejectedFile)
            } else if isCSV {
                totals = try streamCSV(file, rejected: rejectedFile)
            } else {
                totals = try streamRecords(file, kind: kind, array: isArray, rejected: rejectedFile)
            }
            try rejectedFile.close()
            var prepared = PreparedFile(
                id: file.id,
                kind: kind,
                originalName: file.originalName,
                sha256: digest,
                size: size,
                receivedAt: receivedAt,
                content: .streamed(totals)
            )
            prepared.decompressedSize = decompressedSize
            prepared.sender = file.sender ?? "unknown"
            let result = try database.commit([prepared], finishedAt: Clock.timestamp())[0]
            let report = result.report
            var sidecars: [(suffix: String, bytes: [UInt8])] = []
            var sidecarFiles: [(suffix: String, temporary: Spool.TemporaryFile)] = []
            if report.outcome == .partial || report.outcome == .rejected {
                let json = report.json(fileID: file.id, originalName: file.originalName, kind: file.kind) + "\n"
                sidecars.append((SpoolName.errorSuffix, Array(json.utf8)))
            }
            if report.outcome == .partial {
                sidecarFiles.append((SpoolName.rejectedSuffix(rejectedExtension), rejectedFile))
            }
            let day = String(result.finishedAt.prefix(10))
            let destination: Spool.Destination = report.outcome == .rejected ? .failed : .done(day: day)
            let touched = try spool.finish(file, to: destination, sidecars: sidecars, sidecarFiles: sidecarFiles)
            directorySync.schedule(touched)
            logFinished(file, report, claimedAt: claimedAt)
        } catch is StoppedMidFile {
            logger.notice(
                "stopped in the middle of a large file: it resumes at the next start",
                metadata: ["file.id": "\(file.id)"]
            )
        } catch let problem as DecompressionProblem {
            // Found before pass 1 (pass 2 reports its own as the file's last rejected record).
            database.rollbackChunks()
            rejectUnread(file, problem.message, claimedAt: claimedAt)
        } catch let error as SpoolError where error.code == ENOENT {
            logger.warning("claimed file vanished", metadata: ["file.id": "\(file.id)"])
        } catch let error as SpoolError where error.isTransient {
            scheduleRetry(file, reason: error.summary)
        } catch let error as SpoolError {
            // Permanent (EACCES, ELOOP, …): a verdict on the file, not a retry for ever.
            rejectUnread(file, "cannot read the file: \(error.summary)", claimedAt: claimedAt)
        } catch let error as StoreError {
            scheduleRetry(file, reason: error.description)
        } catch {
            scheduleRetry(file, reason: "\(error)", logged: false)
        }
    }

    /// Ends a pass over a file early.
    private struct StopReading: Error {}

    /// Shutdown was asked for in the middle of a large file: it is left in processing/ as a crash would
    /// leave it, and resumes after the restart (its committed chunks count as stored, nothing twice).
    struct StoppedMidFile: Error {}

    /// Between chunks: proof of progress for the watchdog, and the point where a shutdown stops.
    func chunkDone() throws {
        progressed()
        if stopping.load(ordering: .relaxed) {
            // What was written is kept: the restart resumes after it.
            try? database.commitChunks()
            throw StoppedMidFile()
        }
        interleave()
    }

    /// Pass 2: every line (or with `array`, every element of the JSON array) parsed, validated and
    /// committed in chunks; rejected records appended to `rejected`, one per line.
    private func streamRecords(_ file: Spool.Claimed, kind: Kind, array: Bool, rejected: Spool.TemporaryFile) throws
        -> FileReport
    {
        var totals = FileReport(outcome: .accepted)
        var unlisted = 0
        var pending: [JSONRecords.Raw] = []
        var lineNumber = 0
        var number = 0

        let database = self.database
        let catalog = self.catalog
        let today = String(Clock.timestamp().prefix(10))
        // This thread splits and parses the records; the commit thread judges them against the schema,
        // writes them, and lists the rejected ones' lines: the records are made and freed on one thread
        // (freed on another, their many small allocations contended for one malloc arena), and a file of
        // tiny rejected records keeps both cores busy instead of one.
        let committer = ChunkCommitter<[JSONRecords.Raw], (FileReport, [UInt8])> { raws in
            let chunk: AppDatabase.Chunk
            switch kind {
            case .appointments: chunk = .appointments(raws.map { catalog.appointments.record($0) })
            case .zoom: chunk = .zoom(raws.map { catalog.zoom.record($0) })
            case .intake: chunk = .intake(raws.map { catalog.intake.record($0, today: today) })
            case .zoomReport:
                // Not reached: a Reports API file is read whole, or refused over the stream threshold.
                chunk = .zoomReport(
                    raws.map { raw in
                        let problem = RecordProblem(
                            record: raw.number,
                            line: raw.line,
                            pointer: nil,
                            message: "a Reports API page is read whole, not streamed"
                        )
                        return Item(
                            number: raw.number,
                            line: raw.line,
                            text: raw.text,
                            result: .failure(Problems([problem]))
                        )
                    }
                )
            }
            let report = try database.writeChunk(chunk, fileID: file.id)
            var out: [UInt8] = []
            func list<Record>(_ items: [Item<Record>]) {
                let problems = ProblemIndex(report.errors, numbers: items.lazy.map { $0.number })
                for item in items where !problems.positions(item.number).isEmpty {
                    out += item.text.utf8
                    out.append(0x0A)
                }
            }
            if !report.errors.isEmpty {
                switch chunk {
                case .appointments(let items): list(items)
                case .zoom(let items): list(items)
                case .intake(let items): list(items)
                case .zoomReport(let items): list(items)
                }
            }
            return (report, out)
        }
        func done(_ committed: (FileReport, [UInt8])) throws {
            let (report, out) = committed
            if !out.isEmpty { try rejected.append(out) }
            unlisted += totals.absorb(report, listing: Self.listedProblems)
            try chunkDone()
        }

        func flush() throws {
            guard !pending.isEmpty else { return }
            try committer.submit(pending, done: done)
            pending.removeAll(keepingCapacity: true)
        }
        // A chunk holds at most `chunkRecords` records and, parsed, about 32 times `batchBytes`: it is
        // committed as soon as either is reached (memory budget).
        var pendingBytes = 0
        let chunkBytes = configuration.batchBytes
        func add(_ raw: JSONRecords.Raw) throws {
            pending.append(raw)
            pendingBytes += raw.raw.utf8.count
            if pending.count >= Self.chunkRecords || pendingBytes >= chunkBytes {
                try flush()
                pendingBytes = 0
            }
        }

        // A record longer than the record limit is rejected with its size, never parsed, and one endless
        // line cannot fill memory: only its first `maxLine` bytes are kept, to say where it begins.
        let maxLine = configuration.recordLimit
        func tooLong(_ number: Int, line: Int) -> JSONRecords.Raw {
            var error = JSONParseError(
                line: line,
                column: 1,
                reason: "the record is over the record limit of \(maxLine) bytes (memory_budget / 256): not parsed"
            )
            error.tooLarge = true
            return JSONRecords.Raw(number: number, line: line, text: "", raw: "", value: .failure(error))
        }
        func take(_ line: ArraySlice<UInt8>) throws {
            lineNumber += 1
            if line.count > maxLine {
                number += 1
                try add(tooLong(number, line: lineNumber))
                return
            }
            guard let raw = JSONRecords.record(line: line, number: number + 1, lineNumber: lineNumber) else { return }
            number += 1
            try add(raw)
        }

        var broken: DecompressionProblem?
        if array {
            var reader = JSONArrayReader(maxElementBytes: maxLine + 1)
            func element(_ element: JSONArrayReader.Element) throws {
                number += 1
                if element.broken == nil && element.bytes.count > maxLine {
                    try add(tooLong(number, line: element.line))
                } else {
                    try add(JSONRecords.record(element: element))
                }
            }
            broken = try readBreakable(file) { chunk in try reader.feed(chunk, element) }
            if broken == nil { try reader.finish(element) }
        } else {
            broken = try readLines(file, maxLine: maxLine + 1, take)
        }
        try flush()
        try committer.finish(done: done)
        try database.commitChunks()
        if let broken {
            totals.reject(broken)
        } else if number == 0 {
            let what = array ? "the array is empty: no records" : "file is empty: no records"
            totals.errors = [RecordProblem(record: nil, line: nil, pointer: nil, message: what)]
        }
        let skipped = totals.notes.contains { $0.contains("endpoint.url_validation") } ? 1 : 0
        totals.close(unlisted: unlisted, skipped: skipped)
        return totals
    }

    /// Pass 2's read of a gzip file checked whole in pass 1: a stream that breaks now (the file changed
    /// while it was read: its sender still holds it) ends the read there, with the chunks before it
    /// committed — returned, for the file's report to say so.
    private func readBreakable(
        _ file: Spool.Claimed,
        _ body: (ArraySlice<UInt8>) throws -> Void
    ) throws -> DecompressionProblem? {
        do {
            try spool.readChunks(file, body)
            return nil
        } catch let problem as DecompressionProblem {
            return problem
        }
    }

    /// Each line of `file` (without its line break, cut at `maxLine` bytes) to `take`, in order; a
    /// broken gzip stream ends it (the line it cut is not taken).
    private func readLines(
        _ file: Spool.Claimed,
        maxLine: Int,
        _ take: (ArraySlice<UInt8>) throws -> Void
    ) throws -> DecompressionProblem? {
        var carry: [UInt8] = []
        let broken = try readBreakable(file) { chunk in
            var start = chunk.startIndex
            while let newline = chunk[start...].firstIndex(of: 0x0A) {
                if carry.isEmpty {
                    try take(chunk[start..<min(newline, start + maxLine)])
                } else {
                    carry += chunk[start..<min(newline, start + max(0, maxLine - carry.count))]
                    try take(carry[...])
                    carry.removeAll(keepingCapacity: true)
                }
                start = newline + 1
            }
            carry += chunk[start..<min(chunk.endIndex, start + max(0, maxLine - carry.count))]
        }
        if broken == nil && !carry.isEmpty { try take(carry[...]) }
        return broken
    }

    /// Pass 2 for an intake CSV: the header mapped, then rows validated and committed in chunks; rejected
    /// rows go to the `.rejected.csv` sidecar as the original header plus `error` and `line` columns.
    private func streamCSV(_ file: Spool.Claimed, rejected: Spool.TemporaryFile) throws -> FileReport {
        var reader = CSVReader(maxRecordBytes: configuration.recordLimit)
        var columns: IntakeColumns?
        var headerRaw: [UInt8] = []
        var fileProblem: RecordProblem?
        var rows = 0
        let today = String(Clock.timestamp().prefix(10))
        let sink = CSVRowSink<IntakeRecord>(self, file, rejected: rejected) { .intake($0) }
        sink.totals.details = ["patients_created": 0, "patients_updated": 0, "visits_created": 0]
        sink.header = { headerRaw + Array(",error,line\n".utf8) }

        func take(_ record: CSVRecord) throws {
            guard fileProblem == nil else { return }
            guard let mapped = columns else {
                headerRaw = record.raw
                switch catalog.intake.columns(header: record) {
                case .success(let found):
                    columns = found
                    if !found.extra.isEmpty { sink.totals.notes.append(IntakeColumns.extraNote(found.extra)) }
                case .failure(let problem): fileProblem = problem
                }
                return
            }
            // A blank line (one empty field) is no row.
            if record.fields == [""] { return }
            rows += 1
            try sink.add(
                catalog.intake.row(record, number: rows, columns: mapped, today: today),
                bytes: record.raw.count
            )
        }

        let broken = try readBreakable(file) { chunk in try reader.feed(chunk, take) }
        if broken == nil { try reader.finish(take) }
        if let fileProblem { return FileReport(outcome: .rejected, errors: [fileProblem]) }
        if let broken, columns == nil { return FileReport(outcome: .rejected, errors: [broken.problem]) }
        if columns == nil {
            return FileReport(
                outcome: .rejected,
                errors: [RecordProblem(record: nil, line: nil, pointer: nil, message: "file is empty: no header")]
            )
        }
        var totals = try sink.finish(broken: broken)
        if rows == 0 && broken == nil {
            // A header and no rows (a daily feed on a day without visits): a valid file of zero records.
            totals.notes.append(IntakeColumns.noRowsNote)
            totals.outcome = .accepted
        }
        return totals
    }

    /// How many fields a row of a CSV file with this header line needs; nil for a header that is not
    /// one (the file is rejected for it anyway).
    private func csvWidth(header line: [UInt8]) -> Int? {
        var reader = CSVReader(maxRecordBytes: configuration.recordLimit)
        var header: CSVRecord?
        reader.feed(line[...]) { header = $0 }
        reader.finish { header = header ?? $0 }
        guard let header, case .success(let columns) = catalog.intake.columns(header: header) else { return nil }
        return (columns.index.values.max() ?? 0) + 1
    }

    /// A committed chunk's report, and its rejected records as the lines of the `.rejected` file. The
    /// report keeps only the problems a file's report can list; the others are counted.
    struct Committed: Sendable {
        var report: FileReport
        var unlisted: Int
        var rejected: [UInt8]

        init(_ report: FileReport, rejected: [UInt8]) {
            self.report = report
            self.unlisted = max(0, report.errors.count - Engine.listedProblems)
            if unlisted > 0 { self.report.errors.removeLast(unlisted) }
            self.rejected = rejected
        }
    }

}

extension DecompressionProblem {
    /// The file's problem: no record, no line (an offset in the compressed bytes).
    var problem: RecordProblem {
        RecordProblem(record: nil, line: nil, pointer: nil, message: message)
    }
}

extension FileReport {
    /// The rest of a file that broke in pass 2 is one rejected record (the records before it stand, as
    /// for a JSON array whose structure breaks): `partial`, not `rejected` with records stored.
    mutating func reject(_ broken: DecompressionProblem) {
        var problem = broken.problem
        problem.message =
            broken.message + " — the file changed after it was checked (its sender still writes it); the records "
            + "before this point are stored, the rest is not read: send the whole file again"
        errors.insert(problem, at: 0)
        rejected += 1
    }
}

extension Engine {
    /// Pass 2 for a Zoom participants report CSV: its layout found by its headers, then rows committed in
    /// chunks as intake's are; rejected rows go to the `.rejected.csv` sidecar after the meeting table and
    /// header, so that it can be fixed and dropped again as it is.
    func streamReportCSV(_ file: Spool.Claimed, rejected: Spool.TemporaryFile) throws -> FileReport {
        var reader = CSVReader(maxRecordBytes: configuration.recordLimit)
        var table = ZoomReportCSV(times: LocalTimeReader(file.localTimes), fileName: file.originalName)
        var rows = 0
        let sink = CSVRowSink<ZoomReportRow>(self, file, rejected: rejected) { .zoomReport($0) }
        sink.header = { table.rejectedHeader }
        func take(_ record: CSVRecord) throws {
            guard let item = table.take(record) else { return }
            rows += 1
            try sink.add(item, bytes: record.raw.count)
        }
        let broken = try readBreakable(file) { chunk in try reader.feed(chunk, take) }
        if broken == nil {
            try reader.finish(take)
            table.finish()
        }
        if let problem = table.fileProblem { return FileReport(outcome: .rejected, errors: [problem]) }
        if let broken, !table.hasTable { return FileReport(outcome: .rejected, errors: [broken.problem]) }
        var totals = try sink.finish(broken: broken)
        if rows == 0 && broken == nil {
            totals.notes.append("the participant table has no rows: nothing to store")
            totals.outcome = .accepted
        }
        totals.notes.append("local times read as \(file.localTimes.summary)")
        if let mismatch = table.otherOrder {
            // Streamed, its rows before were committed as read: said, for the operator to check.
            totals.notes.append(
                "line \(mismatch.line): \(mismatch.problem); dates that fit both orders were read as "
                    + "\(file.localTimes.dateOrder.rawValue): check them"
            )
        }
        return totals
    }
}

/// A streamed CSV file's rows, committed in chunks on the commit thread — at ``Engine/chunkRecords`` rows
/// or `batchBytes` of them, whichever comes first (rows of a megabyte each made chunks of 2 GB) — and its
/// rejected rows written to the `.rejected.csv` sidecar after ``header`` (the file's own first lines).
final class CSVRowSink<Record: Sendable> {
    var totals = FileReport(outcome: .accepted)
    /// The sidecar's first lines, asked for when the first rejected row is written.
    var header: () -> [UInt8] = { [] }
    private unowned let engine: Engine
    private let rejected: Spool.TemporaryFile
    private let committer: ChunkCommitter<[Item<Record>], Engine.Committed>
    private var pending: [Item<Record>] = []
    private var pendingBytes = 0
    private var unlisted = 0
    private var wroteHeader = false

    init(
        _ engine: Engine,
        _ file: Spool.Claimed,
        rejected: Spool.TemporaryFile,
        chunk: @escaping @Sendable ([Item<Record>]) -> AppDatabase.Chunk
    ) {
        self.engine = engine
        self.rejected = rejected
        let database = engine.database
        committer = ChunkCommitter { items in
            let report = try database.writeChunk(chunk(items), fileID: file.id)
            return Engine.Committed(report, rejected: RejectedRows.csv(items, report))
        }
    }

    func add(_ item: Item<Record>, bytes: Int) throws {
        pending.append(item)
        pendingBytes += bytes
        if pending.count >= Engine.chunkRecords || pendingBytes >= engine.configuration.batchBytes { try flush() }
    }

    private func flush() throws {
        guard !pending.isEmpty else { return }
        try committer.submit(pending, done: done)
        pending.removeAll(keepingCapacity: true)
        pendingBytes = 0
    }

    private func done(_ committed: Engine.Committed) throws {
        var out: [UInt8] = []
        if !committed.rejected.isEmpty && !wroteHeader {
            out += header()
            wroteHeader = true
        }
        out += committed.rejected
        if !out.isEmpty { try rejected.append(out) }
        unlisted += totals.absorb(committed.report, listing: Engine.listedProblems) + committed.unlisted
        try engine.chunkDone()
    }

    /// Commits what is left; the file's totals (a pass that `broken` ended says so).
    func finish(broken: DecompressionProblem?) throws -> FileReport {
        try flush()
        try committer.finish(done: done)
        try engine.database.commitChunks()
        if let broken { totals.reject(broken) }
        totals.close(unlisted: unlisted)
        return totals
    }
}
