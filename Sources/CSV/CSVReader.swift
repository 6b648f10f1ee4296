// CSV: a streaming RFC 4180 reader over bytes.
//
// Trusts nothing: partners' files are often imperfect. Strict where RFC 4180 is clear (a quote only
// opens a field, after a closing quote only a comma or a line break may follow, no bare CR), with the
// usual relaxations (LF as well as CRLF, a UTF-8 byte-order mark). A broken record is reported with its
// record and line number and reading goes on at the next line: one bad row never stops the others.
// Knows bytes and fields only: no files, no columns, no logging.

/// One logical record (a row).
package struct CSVRecord: Sendable {
    /// 1-based record number in the file (the header is record 1).
    package var number: Int
    /// 1-based line where the record starts.
    package var line: Int
    /// The fields, or nil when the record is broken.
    package var fields: [String]?
    /// Why the record is broken.
    package var error: String?
    /// The record's bytes as they were in the file, without its line break.
    package var raw: [UInt8]
}

/// Feed it chunks of any size; it calls `emit` for each complete record, in order.
package struct CSVReader {
    private enum State {
        case fieldStart, unquoted, quoted, quoteInQuoted, afterCR, skipping
    }

    private var state = State.fieldStart
    private var field: [UInt8] = []
    private var fields: [[UInt8]] = []
    private var raw: [UInt8] = []
    private var error: String?
    private var number = 0
    private var line = 1
    private var recordLine = 1
    private var started = false
    private var bomChecked = false
    private var pending: [UInt8] = []

    /// The longest record kept: beyond it the record is broken ("longer than …") and the rest of it,
    /// up to its line break, is skipped unkept, so one endless line cannot fill memory.
    package let maxRecordBytes: Int

    package init(maxRecordBytes: Int = 1 << 20) { self.maxRecordBytes = maxRecordBytes }

    /// Whether the input began with a UTF-8 byte-order mark (stripped).
    package private(set) var hadBOM = false

    package mutating func feed(_ chunk: ArraySlice<UInt8>, _ emit: (CSVRecord) throws -> Void) rethrows {
        if bomChecked {
            try feedBytes(chunk, emit)
            return
        }
        // Hold the first bytes back until there are three: they may be a byte-order mark.
        pending += chunk
        if pending.count < 3 { return }
        try releasePending(emit)
    }

    /// Ends the input: a last record without a line break is emitted; an open quote is an error.
    package mutating func finish(_ emit: (CSVRecord) throws -> Void) rethrows {
        if !bomChecked { try releasePending(emit) }
        switch state {
        case .quoted:
            fail("unterminated quoted field")
            try endRecord(emit)
        case .afterCR:
            fail("bare CR line ending")
            try endRecord(emit)
        case .fieldStart where !started:
            break
        default:
            try endRecord(emit)
        }
    }

    private mutating func releasePending(_ emit: (CSVRecord) throws -> Void) rethrows {
        bomChecked = true
        let held = pending
        pending = []
        if held.starts(with: [0xEF, 0xBB, 0xBF]) {
            hadBOM = true
            try feedBytes(held[3...], emit)
        } else {
            try feedBytes(held[...], emit)
        }
    }

    private mutating func fail(_ message: String) {
        if error == nil { error = message }
    }

    private mutating func feedBytes(_ bytes: ArraySlice<UInt8>, _ emit: (CSVRecord) throws -> Void) rethrows {
        for byte in bytes {
            if state == .afterCR {
                if byte == 0x0A {
                    line += 1
                    try endRecord(emit)
                    continue
                }
                fail("bare CR line ending")
                state = .skipping
            }
            if !started {
                started = true
                recordLine = line
            }
            if raw.count >= maxRecordBytes && state != .skipping && byte != 0x0A {
                fail("record longer than \(maxRecordBytes) bytes")
                field = []
                fields = []
                state = .skipping
            }
            switch state {
            case .skipping:
                if byte == 0x0A {
                    line += 1
                    try endRecord(emit)
                } else if raw.count < maxRecordBytes {
                    raw.append(byte)
                }
            case .fieldStart:
                switch byte {
                case 0x22:  // "
                    raw.append(byte)
                    state = .quoted
                case 0x2C:  // ,
                    raw.append(byte)
                    fields.append(field)
                    field = []
                case 0x0D:
                    state = .afterCR
                case 0x0A:
                    line += 1
                    try endRecord(emit)
                default:
                    raw.append(byte)
                    field.append(byte)
                    state = .unquoted
                }
            case .unquoted:
                switch byte {
                case 0x2C, 0x0D, 0x0A:
                    try endField(byte, emit)
                case 0x22:
                    raw.append(byte)
                    fail("quote inside unquoted field")
                    state = .skipping
                default:
                    raw.append(byte)
                    field.append(byte)
                }
            case .quoted:
                raw.append(byte)
                if byte == 0x22 {
                    state = .quoteInQuoted
                } else {
                    if byte == 0x0A { line += 1 }
                    field.append(byte)
                }
            case .quoteInQuoted:
                switch byte {
                case 0x22:
                    raw.append(byte)
                    field.append(byte)
                    state = .quoted
                case 0x2C, 0x0D, 0x0A:
                    try endField(byte, emit)
                default:
                    raw.append(byte)
                    fail("character after closing quote")
                    state = .skipping
                }
            case .afterCR:
                break
            }
        }
    }

    /// A comma ends the field; a CR (awaiting its LF) or LF ends the record.
    private mutating func endField(_ byte: UInt8, _ emit: (CSVRecord) throws -> Void) rethrows {
        switch byte {
        case 0x2C:
            raw.append(byte)
            fields.append(field)
            field = []
            state = .fieldStart
        case 0x0D:
            state = .afterCR
        default:
            line += 1
            try endRecord(emit)
        }
    }

    private mutating func endRecord(_ emit: (CSVRecord) throws -> Void) rethrows {
        number += 1
        var strings: [String]? = nil
        if error == nil {
            fields.append(field)
            var decoded: [String] = []
            decoded.reserveCapacity(fields.count)
            for bytes in fields {
                if bytes.isEmpty {
                    decoded.append("")
                    continue
                }
                if bytes.contains(0) {
                    error = "NUL byte in a field"
                    break
                }
                guard let text = String(validating: bytes, as: UTF8.self) else {
                    error = "invalid UTF-8"
                    break
                }
                decoded.append(text)
            }
            if error == nil { strings = decoded }
        }
        let record = CSVRecord(number: number, line: recordLine, fields: strings, error: error, raw: raw)
        field = []
        fields.removeAll(keepingCapacity: true)
        raw = []
        error = nil
        state = .fieldStart
        started = false
        try emit(record)
    }
}
