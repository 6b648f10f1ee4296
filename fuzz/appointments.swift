// libFuzzer target: the strict JSON parser, the JSON Schema validator, the appointment reader over
// the project's schema.json and the streaming array splitter. Oracle: no crash; every item numbered
// 1…n in order; a file problem and items never both; what the parser accepts it prints back to text
// that parses to the same value; an array the parser accepts streams, in chunks of any size, into
// exactly its elements.

let catalog = try! Catalog(schemaBytes: FuzzSchema.bytes)

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzAppointments(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let parsed = catalog.appointments.read(bytes)
    precondition(parsed.fileProblem == nil || parsed.items.isEmpty, "a file problem with items")
    for (index, item) in parsed.items.enumerated() { precondition(item.number == index + 1, "item numbers") }
    var reader = JSONArrayReader(maxElementBytes: 1 << 20)
    var streamed: [JSONRecords.Raw] = []
    let chunk = 1 + size % 7
    var start = 0
    while start < bytes.count {
        reader.feed(bytes[start..<min(bytes.count, start + chunk)]) { streamed.append(JSONRecords.record(element: $0)) }
        start += chunk
    }
    reader.finish { streamed.append(JSONRecords.record(element: $0)) }
    for (index, raw) in streamed.enumerated() { precondition(raw.number == index + 1, "element numbers") }
    // The HTTP door's check agrees with the parser: same verdict, same error.
    switch (
        Result { () throws(JSONParseError) in try JSONParser.parse(bytes) },
        Result { () throws(JSONParseError) in try JSONParser.check(bytes) }
    ) {
    case (.success(.array(let elements)), .success(.array(let count))):
        precondition(count == elements.count, "check count")
    case (.success(let value), .success(.value(let checked))): precondition(value == checked, "check value")
    case (.failure(let parsed), .failure(let checked)): precondition(parsed == checked, "check error")
    default: preconditionFailure("check and parse disagree")
    }
    if let value = try? JSONParser.parse(bytes) {
        let again = try? JSONParser.parse(Array(value.compactText.utf8))
        precondition(again == value, "printing changed the value")
        _ = catalog.intake.read(bytes, today: "2026-11-23")
        if case .array(let elements) = value {
            let values = streamed.map { raw -> JSONValue? in if case .success(let v) = raw.value { v } else { nil } }
            precondition(values == elements.map { Optional($0) }, "the streamed array differs from the parsed one")
        }
    }
    return 0
}
