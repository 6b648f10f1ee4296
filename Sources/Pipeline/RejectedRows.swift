package import Kinds

/// The `.rejected` CSV sidecar's lines for an intake chunk's rejected rows.
package enum RejectedRows {
    /// The rejected rows of a committed intake chunk as lines of the `.rejected` CSV file: each row as
    /// it was, then its problems and its line. Written as bytes into one buffer, on the commit thread.
    package static func csv<Record>(_ items: [Item<Record>], _ report: FileReport) -> [UInt8] {
        guard !report.errors.isEmpty else { return [] }
        let problems = ProblemIndex(report.errors, numbers: items.lazy.map { $0.number })
        var out: [UInt8] = []
        // The reason as written for the last row, quoted: a row whose problems say the same (bad rows come
        // in runs: the same empty columns, the same wrong date) reuses it whole.
        var reason: [UInt8] = []
        var reasonOf: ArraySlice<Int> = []
        // Each problem as written lately (about one a field), CSV-escaped: a row of other problems is
        // joined from these where it can, and only its new problems are written.
        var pieces = RejectedPieces()
        for item in items {
            let positions = problems.positions(item.number)
            if positions.isEmpty { continue }
            let same =
                positions.count == reasonOf.count
                && zip(positions, reasonOf).allSatisfy { report.errors[$0].saysTheSame(as: report.errors[$1]) }
            if !same {
                reason.removeAll(keepingCapacity: true)
                var quoted = false
                for position in positions {
                    if position != positions.first { reason += "; ".utf8 }
                    quoted = pieces.append(report.errors[position], to: &reason) || quoted
                }
                if quoted {
                    reason.insert(0x22, at: 0)
                    reason.append(0x22)
                }
                reasonOf = positions
            }
            out += item.text.utf8
            out.append(0x2C)
            out += reason
            out.append(0x2C)
            out += String(item.line).utf8
            out.append(0x0A)
        }
        return out
    }

    /// The problems of rejected rows as last written, CSV-escaped (quotes doubled, not yet enclosed):
    /// at most 16, one per place (pointer) as far as they go, so that each field's usual problem is
    /// written once, not once a row.
    struct RejectedPieces {
        private var problems: [RecordProblem] = []
        private var escaped: [[UInt8]] = []
        private var quoted: [Bool] = []
        private var next = 0
        private var scratch: [UInt8] = []

        /// Appends `problem` as `pointer: message`, escaped, to `out`; whether the field must be quoted.
        mutating func append(_ problem: RecordProblem, to out: inout [UInt8]) -> Bool {
            if let index = problems.firstIndex(where: { $0.saysTheSame(as: problem) }) {
                out += escaped[index]
                return quoted[index]
            }
            scratch.removeAll(keepingCapacity: true)
            if problem.appendPointer(to: &scratch, dropSlash: true) { scratch += ": ".utf8 }
            problem.appendMessage(to: &scratch)
            var piece: [UInt8] = []
            piece.reserveCapacity(scratch.count + 8)
            var quote = false
            for byte in scratch {
                piece.append(byte)
                if byte == 0x22 { piece.append(0x22) }
                if byte == 0x22 || byte == 0x2C || byte == 0x0A || byte == 0x0D { quote = true }
            }
            out += piece
            // The slot of a problem at the same place, else the next in turn.
            let slot =
                problems.firstIndex { $0.isAtSamePlace(as: problem) }
                ?? (problems.count < 16 ? problems.count : next)
            if slot == problems.count {
                problems.append(problem)
                escaped.append(piece)
                quoted.append(quote)
            } else {
                problems[slot] = problem
                escaped[slot] = piece
                quoted[slot] = quote
                if slot == next { next = (next + 1) % 16 }
            }
            return quote
        }
    }
}
