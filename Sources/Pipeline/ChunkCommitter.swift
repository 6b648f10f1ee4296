import Dispatch
import Kinds

/// Commits a large file's chunks on a thread of its own while the engine parses the next one: parsing
/// and SQLite then share the two cores instead of taking turns. At most one chunk is in flight, so
/// memory stays at two chunks. Chunks commit in order; after a failed commit no later chunk is
/// started, and the failure is thrown to the engine at its next `submit` or at `finish`. The commit
/// returns what the engine needs of the chunk afterwards (its report, its rejected records already
/// written out as bytes), so the chunk is formatted on the commit thread too: for a file of tiny
/// rejected records a quarter of the work, which the parsing thread no longer waits for.
final class ChunkCommitter<Chunk: Sendable, Output: Sendable>: @unchecked Sendable {
    private let queue = DispatchQueue(label: "carespool.chunk-commit")
    private let group = DispatchGroup()
    private let commit: @Sendable (Chunk) throws -> Output
    // Written on `queue` before `group.leave()`, read by the engine after `group.wait()`.
    private var inFlight: Chunk?
    private var result: Result<Output, any Error>?

    init(commit: @escaping @Sendable (Chunk) throws -> Output) { self.commit = commit }

    /// Waits for the chunk in flight and hands its output to `done`; then starts `chunk`.
    func submit(_ chunk: Chunk, done: (Output) throws -> Void) throws {
        try finish(done: done)
        inFlight = chunk
        group.enter()
        queue.async {
            // Read from `inFlight`, not captured: the engine keeps the last reference and frees the chunk
            // on its own thread. Freed here, its many small allocations went back to the engine's malloc
            // arena from this thread, contending with the engine for it (a third slower).
            self.result = Result { try self.commit(self.inFlight!) }
            self.group.leave()
        }
    }

    /// Waits for the chunk in flight, if any, and hands its output to `done`.
    func finish(done: (Output) throws -> Void) throws {
        guard inFlight != nil else { return }
        group.wait()
        let finished = result
        inFlight = nil
        result = nil
        switch finished {
        case .success(let output): try done(output)
        case .failure(let error): throw error
        case nil: fatalError("a chunk finished without a result")
        }
    }
}
