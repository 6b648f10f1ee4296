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
