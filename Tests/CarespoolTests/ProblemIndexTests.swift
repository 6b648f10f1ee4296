import Foundation
import JSONSchema
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

/// The rejected rows' sidecar reuses a reason already written (the last row's, each field's usual
/// problem): what it writes must be what writing every reason afresh writes, whatever the rows' order —
/// runs, alternations, values that differ only after a cut, quotes, commas, NFC against NFD.
@Suite struct RejectedRowsTests {
    /// Every reason written afresh: `pointer: message` joined by "; ", quoted when it must be.
    static func plain(_ items: [Item<IntakeRecord>], _ errors: [RecordProblem]) -> [UInt8] {
        var out: [UInt8] = []
        for item in items {
            let mine = errors.filter { $0.record == item.number }
            if mine.isEmpty { continue }
            let reason = mine.map { ($0.pointer.map { String($0.dropFirst()) + ": " } ?? "") + $0.message }
                .joined(separator: "; ")
            let special = reason.utf8.contains { $0 == 0x22 || $0 == 0x2C || $0 == 0x0A || $0 == 0x0D }
            let field = special ? "\"" + reason.replacingOccurrences(of: "\"", with: "\"\"") + "\"" : reason
            out += Array((item.text + "," + field + ",\(item.line)\n").utf8)
        }
        return out
    }

    @Test func aReusedReasonIsTheReasonWrittenAfresh() throws {
        let catalog = try projectCatalog()
        let long = String(repeating: "é", count: 81)
        var rows = [
            ",,,,,,", ",,,,,,", "x,,,,,,", ",,,,,,", "x,,,,,,", "x,,,,,,",
            "M1,Zoë,Müller,1980-01-02,V1,2025-03-01,", "M2,Zoë,Müller,2980-01-02,V2,2025-03-01,",
            "M3,Zoë,Müller,\"1980,1\",V3,2025-03-01,", "M3,Zoë,Müller,\"1980\"\"1\",V3,2025-03-01,",
            "M4,,Müller,\(long)a,V4,2025-03-01,", "M4,,Müller,\(long)b,V4,2025-03-01,",
            "M5,Zoë,,e\u{301},V5,y,", "M5,Zoë,,\u{E9},V5,y,",
        ]
        // Past the 16 problems kept: twenty fields' worth of other dates, then the first rows again.
        for n in 0..<20 { rows.append(",,,bad\(n),,,") }
        rows += [",,,,,,", "x,,,,,,", ",,,bad3,,,"]
        let csv = intakeHeader + "\n" + rows.joined(separator: "\n") + "\n"
        let parsed = catalog.intake.readCSV(Array(csv.utf8), today: "2026-11-23")
        var errors: [RecordProblem] = []
        for item in parsed.items {
            if case .failure(let problems) = item.result { problems.append(to: &errors) }
        }
        let report = FileReport(outcome: .partial, errors: errors)
        let written = RejectedRows.csv(parsed.items, report)
        let afresh = Self.plain(parsed.items, errors)
        // By bytes: two strings canonically equal (NFC and NFD) are equal Strings, not equal bytes.
        let differ =
            zip(written, afresh).enumerated().first { $1.0 != $1.1 }?.offset ?? min(written.count, afresh.count)
        #expect(
            written == afresh,
            "from byte \(differ): \(String(decoding: written.dropFirst(differ).prefix(120), as: UTF8.self))"
        )
        #expect(written.split(separator: 0x0A).count == rows.count - 1, "every row but the good one")
    }
}

/// Found by the hostile review: a listed problem was kept until its file ended with the whole value it
/// quotes (a thousand 1 MB dates in an intake file held 1.2 GB). Listed problems are kept as their text,
/// and about 1 MiB of it at most.
@Suite struct ListedProblemsTests {
    @Test func listedProblemsAreTextAndBoundedByTheirBytes() throws {
        let document = try JSONParser.parse(Array(#"{"properties":{"d":{"type":"string","format":"date"}}}"#.utf8))
        let schema = try JSONSchema(document: document)
        let huge = String(repeating: "9", count: 2_000_000)
        let failure = try #require(schema.validate(.object([JSONMember(key: "d", value: .string(huge))])).first)
        var chunk = FileReport(outcome: .rejected)
        var errors: [RecordProblem] = []
        for n in 1...10 {
            Problems(record: n, line: n + 1, failures: [failure]).append(to: &errors)
        }
        // Problems whose pointer names a member 300 KB long.
        let name = String(repeating: "k", count: 300_000)
        for n in 11...20 {
            errors.append(
                RecordProblem(record: n, line: n + 1, pointer: "/" + name, message: "property is not allowed")
            )
        }
        chunk.errors = errors
        var totals = FileReport(outcome: .accepted)
        let unlisted = totals.absorb(chunk, listing: 1_000)
        // Ten dates (their messages cut at 80 characters), then the long pointers until about 1 MiB.
        #expect(totals.errors.prefix(10).allSatisfy { $0.message.utf8.count < 120 && $0.pointer == "/d" })
        #expect(totals.errors.count == 14 && unlisted == 6, "\(totals.errors.count) listed, \(unlisted) not")
        #expect(totals.errors[0] == errors[0] && totals.errors[13] == errors[13])
        // The next chunk lists nothing more: the text listed is past its bound.
        #expect(totals.absorb(chunk, listing: 1_000) == 20)
    }
}
