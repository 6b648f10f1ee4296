// libFuzzer target: the strict JSON parser, the JSON Schema validator and the appointment reader over
// the project's schema.json. Oracle: no crash; every item numbered 1…n in order; a file problem and
// items never both; what the parser accepts it prints back to text that parses to the same value.

let catalog = try! Catalog(schemaBytes: FuzzSchema.bytes)

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzAppointments(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let parsed = catalog.appointments.read(bytes)
    precondition(parsed.fileProblem == nil || parsed.items.isEmpty, "a file problem with items")
    for (index, item) in parsed.items.enumerated() { precondition(item.number == index + 1, "item numbers") }
    if let value = try? JSONParser.parse(bytes) {
        let again = try? JSONParser.parse(Array(value.compactText.utf8))
        precondition(again == value, "printing changed the value")
        _ = catalog.intake.read(bytes, today: "2026-11-23")
    }
    return 0
}
