package import Kinds

/// A committed chunk's problems by record number, gathered once in linear time: a counting sort over
/// the span of the chunk's record numbers (consecutive by construction), with no per-record array or
/// hashing. A file of tiny rejected rows spends much of its time matching rows to their problems.
package struct ProblemIndex {
    private let first: Int
    private let starts: [Int]
    private let ordered: [RecordProblem]

    /// - Parameters:
    ///   - problems: a chunk report's problems, in any order; those without a record are left out.
    ///   - numbers: the chunk's record numbers, in any order.
    package init(_ problems: [RecordProblem], numbers: some Sequence<Int>) {
        var low = Int.max
        var high = Int.min
        for number in numbers {
            low = min(low, number)
            high = max(high, number)
        }
        guard low <= high, !problems.isEmpty else {
            first = 0
            starts = [0]
            ordered = []
            return
        }
        first = low
        let span = high - low + 1
        var starts = [Int](repeating: 0, count: span + 1)
        for problem in problems {
            if let record = problem.record, record >= low, record <= high { starts[record - low + 1] += 1 }
        }
        for slot in 0..<span { starts[slot + 1] += starts[slot] }
        var next = starts
        var ordered = [RecordProblem?](repeating: nil, count: starts[span])
        for problem in problems {
            guard let record = problem.record, record >= low, record <= high else { continue }
            ordered[next[record - low]] = problem
            next[record - low] += 1
        }
        self.starts = starts
        self.ordered = ordered.map { $0! }
    }

    /// The problems of record `number`, in the order the report had them; empty when it has none.
    package subscript(number: Int) -> ArraySlice<RecordProblem> {
        let slot = number - first
        guard slot >= 0, slot + 1 < starts.count else { return [] }
        return ordered[starts[slot]..<starts[slot + 1]]
    }
}
