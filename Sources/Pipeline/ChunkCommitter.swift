import Dispatch
import Kinds

/// Commits a large file's chunks on a thread of its own while the engine parses the next one: parsing
/// and SQLite then share the two cores instead of taking turns. At most one chunk is in flight, so
/// memory stays at two chunks. Chunks commit in order; after a failed commit no later chunk is
/// started, and the failure is thrown to the engine at its next `submit` or at `finish`.
final class ChunkCommitter<Chunk: Sendable>: @unchecked Sendable {
    private let queue = DispatchQueue(label: "carespool.chunk-commit")
    private let group = DispatchGroup()
    private let commit: @Sendable (Chunk) throws -> FileReport
    // Written on `queue` before `group.leave()`, read by the engine after `group.wait()`.
    private var inFlight: (chunk: Chunk, result: Result<FileReport, any Error>?)?

    init(commit: @escaping @Sendable (Chunk) throws -> FileReport) { self.commit = commit }

    /// Waits for the chunk in flight and hands it with its report to `done`; then starts `chunk`.
    func submit(_ chunk: Chunk, done: (Chunk, FileReport) throws -> Void) throws {
        try finish(done: done)
        inFlight = (chunk, nil)
        group.enter()
        queue.async {
            let result = Result { try self.commit(chunk) }
            self.inFlight?.result = result
            self.group.leave()
        }
    }

    /// Waits for the chunk in flight, if any, and hands it with its report to `done`.
    func finish(done: (Chunk, FileReport) throws -> Void) throws {
        guard let previous = inFlight else { return }
        group.wait()
        let result = inFlight?.result
        inFlight = nil
        switch result {
        case .success(let report): try done(previous.chunk, report)
        case .failure(let error): throw error
        case nil: fatalError("a chunk finished without a result")
        }
    }
}
