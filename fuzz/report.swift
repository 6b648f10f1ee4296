// libFuzzer target: the Zoom participants report reader (CSV in its three layouts, the Reports API's JSON)
// and its local times, in a US inbox and a day-first 24-hour one. Oracle: no crash; items numbered 1…n;
// every row read has a meeting id of digits, and never leaves before it joins.

let chicago = LocalTimeReader(LocalTimes(zone: "America/Chicago"))
let berlin = LocalTimeReader(LocalTimes(zone: "Europe/Berlin", dateOrder: .dayFirst, clock: .twentyFour))

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzReport(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    for times in [chicago, berlin] {
        let (parsed, _) = ZoomReportReader().read(bytes, fileName: "participants_85218486288.csv", times: times)
        for (index, item) in parsed.items.enumerated() {
            precondition(item.number == index + 1, "item numbers")
            if case .success(let row) = item.result {
                precondition(row.meetingID.isEmpty || row.meetingID.allSatisfy(\.isNumber), "a meeting id not digits")
                precondition(!row.meetingID.isEmpty || row.meetingUUID != nil, "a row of no meeting")
                precondition(row.left.map { $0 >= row.joined } ?? true, "a row that leaves before it joins")
            }
        }
    }
    return 0
}
