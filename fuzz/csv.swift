// libFuzzer target: the CSV reader, and the intake reader over it (header mapping, row validation).
// Oracle: the records are the same whatever the chunking of the input (the first byte chooses the chunk
// size), record numbers count up from 1, a record's raw bytes never exceed the input; the intake reader
// gives a file problem or rows numbered in order, never both, and every stored row passed the rules.

let catalog = try! Catalog(schemaBytes: FuzzSchema.bytes)

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzCSV(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = Array(UnsafeBufferPointer(start: data, count: size))
    guard let first = input.first else { return 0 }
    let bytes = Array(input.dropFirst())
    func parse(chunk: Int) -> [CSVRecord] {
        var reader = CSVReader()
        var records: [CSVRecord] = []
        var start = 0
        while start < bytes.count {
            let end = min(bytes.count, start + chunk)
            reader.feed(bytes[start..<end]) { records.append($0) }
            start = end
        }
        reader.finish { records.append($0) }
        return records
    }
    let whole = parse(chunk: max(1, bytes.count))
    let chunked = parse(chunk: Int(first % 17) + 1)
    precondition(whole.count == chunked.count, "chunking changed the record count")
    for (index, (a, b)) in zip(whole, chunked).enumerated() {
        precondition(a.number == index + 1 && b.number == index + 1, "record numbers")
        precondition(
            a.fields == b.fields && a.error == b.error && a.raw == b.raw && a.line == b.line,
            "chunking changed a record"
        )
        precondition(a.raw.count <= bytes.count, "raw longer than the input")
    }
    let intake = catalog.intake.readCSV(bytes, today: "2026-11-23")
    precondition(intake.fileProblem == nil || intake.items.isEmpty, "a file problem with rows")
    var previous = 0
    for item in intake.items {
        precondition(item.number > previous, "row numbers out of order")
        previous = item.number
        if case .success(let row) = item.result {
            precondition(!row.mrn.isEmpty && row.mrn.count <= 64, "an MRN outside the rules was accepted")
            precondition(row.birthDate <= row.visitDate, "a birth date after the visit was accepted")
            precondition(row.birthDate <= "2026-11-23", "a birth date in the future was accepted")
        }
    }
    return 0
}
