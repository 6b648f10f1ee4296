// libFuzzer target: the CSV reader. Oracle: the records are the same whatever the chunking of the input
// (the first byte chooses the chunk size), record numbers count up from 1, and a record's raw bytes
// never exceed the input.

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
    return 0
}
