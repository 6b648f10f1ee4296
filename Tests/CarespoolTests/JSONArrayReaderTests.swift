import JSONSchema
import Kinds
import Testing

/// The streaming splitter of large JSON arrays against the whole-file reader, fed in chunks of every
/// size, and where an array's structure breaks.
@Suite struct JSONArrayReaderTests {
    /// Every element of `text` fed `chunk` bytes at a time, as records.
    static func records(_ text: String, chunk: Int, maxElementBytes: Int = 16 << 20) -> [JSONRecords.Raw] {
        let bytes = Array(text.utf8)
        var reader = JSONArrayReader(maxElementBytes: maxElementBytes)
        var out: [JSONRecords.Raw] = []
        var start = 0
        while start < bytes.count {
            let end = min(bytes.count, start + chunk)
            reader.feed(bytes[start..<end]) { out.append(JSONRecords.record(element: $0)) }
            start = end
        }
        reader.finish { out.append(JSONRecords.record(element: $0)) }
        return out
    }

    static let wellFormed = [
        "[]",
        "\u{FEFF}  [ {\"a\":1} ]\n",
        "[{\"a\":\"x,]}\\\"[{\"},{\"b\":[1,[2,{\"c\":\"\\\\\"}]]}]",
        "[\n  {\n    \"a\": 1\n  },\n  {\n    \"b\": \"two\\nlines\"\n  }\n]\n",
        "[1, -2.5e3 ,true,false,null,\"s\",[],{}]",
        "[{\"é\":\"ü\u{1F600}\"},\r\n{\"x\":[]}]",
    ]

    @Test(arguments: wellFormed)
    func wellFormedArraysSplitAsTheWholeFileReaderSplitsThem(_ text: String) {
        let whole = JSONRecords.split(Array(text.utf8))
        for chunk in [1, 2, 3, 7, 64, 1 << 20] {
            let streamed = Self.records(text, chunk: chunk)
            #expect(streamed.map(\.raw) == whole.records.map(\.raw), "chunk \(chunk)")
            #expect(streamed.map(\.line) == whole.records.map(\.line), "chunk \(chunk)")
            #expect(streamed.map(\.number) == whole.records.map(\.number))
            #expect(streamed.map(\.text) == whole.records.map(\.text))
            #expect(streamed.allSatisfy { if case .success = $0.value { true } else { false } })
        }
    }

    /// (text, records that parse, the problem of the rejected record)
    static let broken: [(String, Int, String)] = [
        ("[{\"a\":1} {\"b\":2}]", 1, "the array breaks at line 1: expected ',' or ']' after record 1"),
        ("[{\"a\":1},]", 1, "the array breaks at line 1: a ']' after a ',' (after record 1)"),
        ("[{\"a\":1}]\n{\"b\":2}\n", 1, "the array breaks at line 2: text after the array's closing ']'"),
        ("[{\"a\":1},\n{\"b\":2}\n", 2, "the array is not closed: the file ends before its ']' (cut short?)"),
        ("[{\"a\":1},{\"b\":", 1, "unexpected end of input"),
        ("[{\"a\":1},{\"b\":\"unterminated]", 1, "unterminated string"),
        ("[{\"a\": tru},{\"b\":2}]", 1, "invalid literal"),
        ("[{\"a\":1},7", 2, "the array is not closed"),
    ]

    @Test(arguments: broken)
    func aBrokenElementOrStructureIsOneRejectedRecordAndTheRecordsBeforeItStand(
        _ text: String,
        _ good: Int,
        _ problem: String
    ) {
        for chunk in [1, 5, 1 << 20] {
            let streamed = Self.records(text, chunk: chunk)
            let parsed = streamed.filter { if case .success = $0.value { true } else { false } }
            #expect(parsed.count == good, "\(text) chunk \(chunk)")
            let failures = streamed.compactMap { if case .failure(let error) = $0.value { error } else { nil } }
            #expect(failures.count == 1, "\(text) chunk \(chunk)")
            guard let error = failures.first else {
                Issue.record("no rejected record: \(text)")
                continue
            }
            #expect(error.reason.contains(problem), "\(error.reason)")
        }
    }

    /// An element over the limit is cut there and rejected; the elements after it still stand.
    @Test func anElementOverTheLimitIsCutAndTheNextOnesStand() {
        let text = "[{\"a\":\"" + String(repeating: "x", count: 100) + "\"},{\"b\":2}]"
        let streamed = Self.records(text, chunk: 13, maxElementBytes: 50)
        #expect(streamed.count == 2)
        #expect(streamed[0].raw.utf8.count == 50)
        if case .success = streamed[0].value { Issue.record("a cut element parsed") }
        #expect(streamed[1].raw == "{\"b\":2}")
    }
}
