import Kinds
import Pipeline
import Testing

/// A committed chunk's problems matched to its records: what the `.rejected` file lists for each.
@Suite struct ProblemIndexTests {
    private func problem(_ record: Int?, _ message: String) -> RecordProblem {
        RecordProblem(record: record, line: record.map { $0 + 1 }, pointer: nil, message: message)
    }

    @Test func eachRecordGetsItsOwnProblemsInReportOrderWhateverOrderTheReportHasThem() {
        let problems = [
            problem(12, "a"), problem(10, "b"), problem(12, "c"), problem(nil, "file"), problem(99, "elsewhere"),
            problem(11, "d"), problem(10, "e"),
        ]
        let index = ProblemIndex(problems, numbers: [12, 10, 11, 13])
        #expect(index[10].map(\.message) == ["b", "e"])
        #expect(index[11].map(\.message) == ["d"])
        #expect(index[12].map(\.message) == ["a", "c"])
        #expect(index[13].isEmpty)
        #expect(index[9].isEmpty)
        #expect(index[99].isEmpty)
    }

    @Test func noProblemsOrNoRecordsGiveEmptyLists() {
        #expect(ProblemIndex([], numbers: [1, 2, 3])[2].isEmpty)
        #expect(ProblemIndex([problem(1, "a")], numbers: [Int]())[1].isEmpty)
    }
}

/// The last line of a CSV or NDJSON file, judged as its bytes arrive in chunks of any size.
@Suite struct TailCheckTests {
    private func judge(_ text: String, csv: Bool, width: Int? = 3, chunk: Int) -> RecordProblem? {
        var check = TailCheck(csv: csv, limit: 1 << 20)
        let bytes = Array(text.utf8)
        var start = 0
        while start < bytes.count {
            check.feed(bytes[start..<min(bytes.count, start + chunk)])
            start += chunk
        }
        return check.problem(headerWidth: width)
    }

    @Test func aCutLastRecordIsFoundWhateverTheChunksAndACompleteOneIsNot() {
        let cases: [(text: String, csv: Bool, cut: (line: Int, byte: Int)?)] = [
            ("a,b,c\n1,2,3\n", true, nil),
            ("a,b,c\n1,2,3", true, nil),  // complete, no line end
            ("a,b,c\n1,2,3\n  \r\n", true, nil),  // blank after the last line end
            ("a,b,c\n1,2,3\n4,5", true, (3, 12)),  // short of the header's fields
            ("a,b,c\n1,\"x\ny\",3\n4,\"open\nstill", true, (4, 16)),  // a quoted field never closed
            ("a,b,c\n1,\"x\ny\",3", true, nil),  // a quoted line break in a complete last record
            ("a,b,c", true, nil),  // the header alone
            ("{\"a\":1}\n{\"a\":2}", false, nil),
            ("{\"a\":1}\n{\"a\":2}\n", false, nil),
            ("{\"a\":1}\n{\"a\":2", false, (2, 8)),
        ]
        for (text, csv, cut) in cases {
            for chunk in [1, 2, 5, 1 << 16] {
                let problem = judge(text, csv: csv, chunk: chunk)
                #expect(problem?.line == cut?.line, "\(text.debugDescription) in chunks of \(chunk)")
                if let cut {
                    #expect(
                        problem?.message.hasPrefix(
                            "truncated upload: last line incomplete (line \(cut.line), byte \(cut.byte))"
                        ) == true,
                        "\(text.debugDescription): \(problem?.message ?? "none")"
                    )
                }
            }
        }
    }

    @Test func aWholeNDJSONFileIsJudgedButOneJSONDocumentIsNot() {
        #expect(TailCheck.ndjson(Array("{\n  \"a\": 1\n}".utf8), limit: 1 << 20) == nil)
        #expect(TailCheck.ndjson(Array("{\"a\":1}\n{\"a\"".utf8), limit: 1 << 20)?.line == 2)
        #expect(TailCheck.ndjson(Array("{\"a\":1}\n".utf8), limit: 1 << 20) == nil)
    }
}
