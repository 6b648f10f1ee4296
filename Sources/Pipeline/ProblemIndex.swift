package import Kinds

/// A committed chunk's problems by record number, gathered once in linear time: a counting sort over
/// the span of the chunk's record numbers (consecutive by construction), with no per-record array or
/// hashing. A file of tiny rejected rows spends much of its time matching rows to their problems.
package struct ProblemIndex {
    private let first: Int
    private let starts: [Int]
    /// Positions in `problems`, record by record (no problem is copied: a million rows' problems were).
    private let ordered: [Int]
    private let problems: [RecordProblem]

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
        self.problems = problems
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
        var ordered = [Int](repeating: 0, count: starts[span])
        for (position, problem) in problems.enumerated() {
            guard let record = problem.record, record >= low, record <= high else { continue }
            ordered[next[record - low]] = position
            next[record - low] += 1
        }
        self.starts = starts
        self.ordered = ordered
    }

    /// The problems of record `number`, in the order the report had them; empty when it has none.
    package subscript(number: Int) -> LazyMapCollection<ArraySlice<Int>, RecordProblem> {
        positions(number).lazy.map { [problems] in problems[$0] }
    }

    /// Where the problems of record `number` are in the list given, in its order (none copied).
    package func positions(_ number: Int) -> ArraySlice<Int> {
        let slot = number - first
        return ordered[slot >= 0 && slot + 1 < starts.count ? starts[slot]..<starts[slot + 1] : 0..<0]
    }
}
