// libFuzzer target: the Zoom reader and normaliser (ids as text, event and participant keys). Oracle:
// no crash; items numbered 1…n; every stored record has a meeting id and an event.

let catalog = try! Catalog(schemaBytes: FuzzSchema.bytes)

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzZoom(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let parsed = catalog.zoom.read(bytes)
    for (index, item) in parsed.items.enumerated() {
        precondition(item.number == index + 1, "item numbers")
        if case .success(.event(let event)) = item.result {
            precondition(!event.meetingID.isEmpty && !event.name.isEmpty, "an event without meeting id or name")
            let again = try? JSONParser.parse(Array(event.raw.utf8))
            precondition(again != nil, "a stored event whose raw JSON does not parse")
        }
    }
    return 0
}
