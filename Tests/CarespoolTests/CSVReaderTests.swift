import CSV
import Foundation
import JSONSchema
import Testing

func readCSV(_ bytes: [UInt8], chunk: Int = 7) -> [CSVRecord] {
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

/// Every file of ../shared/testdata/csv/ against derived-expectations.json (strict RFC 4180), and the
/// csv-spectrum files against their upstream JSON.
@Suite struct CSVCorpusTests {
    static let root = TestPaths.testdata.appendingPathComponent("csv")

    static let expectations: [(path: String, value: JSONValue)] = {
        guard let data = try? Data(contentsOf: root.appendingPathComponent("derived-expectations.json")),
            let document = try? JSONParser.parse([UInt8](data)), case .object(let files) = document["files"]
        else { return [] }
        return files.map { ($0.key, $0.value) }
    }()

    @Test func theCorpusIsComplete() {
        #expect(Self.expectations.count == 34)
    }

    @Test(arguments: expectations.map(\.path))
    func everyFileReadsAsTheStrictReadingSays(path: String) throws {
        let expected = try #require(Self.expectations.first { $0.path == path }?.value["rfc4180_strict"])
        let bytes = [UInt8](try Data(contentsOf: Self.root.appendingPathComponent(path)))
        // Chunk sizes that split CRLFs, quotes and multi-byte characters, and one that holds the file.
        for chunk in [1, 2, 3, 5, 64, 1 << 20] {
            let records = readCSV(bytes, chunk: chunk)
            if expected["ok"] == .bool(true) {
                guard case .array(let rows) = expected["records"] else {
                    Issue.record("no records for \(path)")
                    return
                }
                let want = rows.map { row -> [String] in
                    guard case .array(let fields) = row else { return [] }
                    return fields.compactMap(\.stringValue)
                }
                #expect(
                    records.map { $0.error } == Array(repeating: nil, count: records.count),
                    "\(path) chunk \(chunk)"
                )
                #expect(records.map { $0.fields ?? [] } == want, "\(path) chunk \(chunk)")
            } else {
                let message = try #require(expected["error"]?.stringValue)
                let firstBad = try #require(records.first { $0.error != nil }, "\(path): no error found")
                if let range = message.range(of: "(record ") {
                    let number = Int(message[range.upperBound...].prefix { $0.isNumber })
                    #expect(firstBad.number == number, "\(path) chunk \(chunk): \(firstBad.error ?? "")")
                } else {
                    #expect(message.contains("UTF-8") && firstBad.error == "invalid UTF-8", "\(path)")
                }
            }
        }
    }

    @Test func csvSpectrumFilesMatchTheirUpstreamJSON() throws {
        let folder = Self.root.appendingPathComponent("csv-spectrum")
        let names = try FileManager.default.contentsOfDirectory(atPath: folder.appendingPathComponent("csvs").path)
            .filter { $0.hasSuffix(".csv") && $0 != "location_coordinates.csv" }  // upstream defect, see SOURCES.md
        #expect(names.count == 11)
        for name in names {
            let records = readCSV([UInt8](try Data(contentsOf: folder.appendingPathComponent("csvs/" + name))))
            let json = try JSONParser.parse(
                [UInt8](
                    try Data(
                        contentsOf: folder.appendingPathComponent(
                            "json/" + name.replacingOccurrences(of: ".csv", with: ".json")
                        )
                    )
                )
            )
            guard case .array(let objects) = json, let header = records.first?.fields else {
                Issue.record("\(name): not an array")
                continue
            }
            let rows = records.dropFirst().map { record in
                JSONValue.object(zip(header, record.fields ?? []).map { JSONMember(key: $0, value: .string($1)) })
            }
            #expect(rows == objects, "\(name)")
        }
    }

    /// Found by the torture campaign (a 2 GB file without a line break was held in memory): a record
    /// longer than the limit is broken, kept only up to it, and the next line is read normally.
    @Test func anEndlessRecordIsBrokenAtTheLimitAndTheNextLineIsRead() {
        var reader = CSVReader(maxRecordBytes: 1_000)
        var records: [CSVRecord] = []
        reader.feed(Array("a,b\n".utf8)[...]) { records.append($0) }
        for _ in 0..<100 { reader.feed(Array(repeating: UInt8(ascii: "x"), count: 1_000)[...]) { records.append($0) } }
        reader.feed(Array(",\"q\"\nc,d\n".utf8)[...]) { records.append($0) }
        reader.finish { records.append($0) }
        #expect(records.count == 3)
        #expect(records[1].fields == nil && records[1].error == "record longer than 1000 bytes")
        #expect(records[1].raw.count == 1_000 && records[1].line == 2)
        #expect(records[2].fields == ["c", "d"] && records[2].line == 3)
    }

    @Test func recordsKnowTheirLineAndRawBytesAndOneBadRowDoesNotStopTheRest() {
        let text = "a,b\r\n1,\"x\ny\"\r\nbad\"row,2\n3,4\n\"open,5\n"
        let records = readCSV(Array(text.utf8), chunk: 3)
        #expect(records.map(\.line) == [1, 2, 4, 5, 6])
        #expect(records[1].fields == ["1", "x\ny"])
        #expect(records[2].error == "quote inside unquoted field")
        #expect(String(decoding: records[2].raw, as: UTF8.self) == "bad\"row,2")
        #expect(records[3].fields == ["3", "4"])
        #expect(records[4].error == "unterminated quoted field")
    }

    @Test func aByteOrderMarkIsStrippedAndNulBytesRejectTheirRow() {
        let records = readCSV([0xEF, 0xBB, 0xBF] + Array("h\nx\0y\nz\n".utf8), chunk: 1)
        #expect(records.map(\.fields) == [["h"], nil, ["z"]])
        #expect(records[1].error == "NUL byte in a field")
    }
}
