import Dispatch
package import Kinds
import Logging
import PostgresNIO
package import Store
import Synchronization

/// The pipeline's store over the site's PostgreSQL database: `SiteDatabase`'s async calls made from the
/// pipeline's own queue (a Dispatch thread, never Swift's cooperative pool, so waiting there blocks no
/// task), their failures as `StoreError`s — transient when the server is down or the connection dropped,
/// so that the pipeline keeps the files in processing/ and tries again with backoff. Every kind, large
/// files chunk by chunk.
package final class SiteStore: PipelineStore {
    package let site: SiteDatabase
    package let notify: NotifyPolicy

    package init(site: SiteDatabase, notify: NotifyPolicy = NotifyPolicy()) {
        self.site = site
        self.notify = notify
    }

    /// Where the store's async work runs: a serial queue of its own.
    static let executor = QueueExecutor(label: "carespool.postgres")

    /// Runs `body` to its end and waits for it on this (non-cooperative) thread.
    static func waiting<T: Sendable>(
        _ body: @escaping @Sendable () async throws(PostgresStoreError) -> T
    ) throws(StoreError) -> T {
        let outcome = Mutex<Result<T, PostgresStoreError>?>(nil)
        let done = DispatchSemaphore(value: 0)
        // On a thread of its own, not Swift's cooperative pool (two threads here): were both busy or
        // blocked, this work could not run and the pipeline would wait for it for ever.
        Task(executorPreference: Self.executor) {
            let result: Result<T, PostgresStoreError>
            do throws(PostgresStoreError) {
                result = .success(try await body())
            } catch {
                result = .failure(error)
            }
            outcome.withLock { $0 = result }
            done.signal()
        }
        done.wait()
        switch outcome.withLock({ $0 })! {
        case .success(let value): return value
        case .failure(let error): throw StoreError(transient: error.transient, description: error.description)
        }
    }

    package func commit(_ files: [PreparedFile], finishedAt: String) throws(StoreError) -> [CommittedFile] {
        let site = site
        let notify = notify
        return try Self.waiting { () async throws(PostgresStoreError) in
            try await site.commit(files, finishedAt: finishedAt, notify: notify)
        }
    }

    package func hasLedgerRow(id: String) throws(StoreError) -> Bool {
        let site = site
        return try Self.waiting { () async throws(PostgresStoreError) in try await site.hasLedgerRow(id: id) }
    }

    package func ledgerReport(id: String) throws(StoreError) -> CommittedFile? {
        let site = site
        return try Self.waiting { () async throws(PostgresStoreError) in try await site.ledgerReport(id: id) }
    }

    package func earlierFile(kind: Kind, sha256: String, excluding id: String) throws(StoreError) -> String? {
        let site = site
        return try Self.waiting { () async throws(PostgresStoreError) in
            try await site.earlierFile(kind: kind, sha256: sha256, excluding: id)
        }
    }

    package func writeChunk(_ chunk: AppDatabase.Chunk, fileID: String) throws(StoreError) -> FileReport {
        let site = site
        return try Self.waiting { () async throws(PostgresStoreError) in
            try await site.writeChunk(chunk, fileID: fileID)
        }
    }

    /// Each chunk commits by itself (``SiteDatabase/writeChunk(_:fileID:)``).
    package func commitChunks() throws(StoreError) {}

    package func rollbackChunks() {}

    /// PostgreSQL checkpoints by itself.
    package func checkpoint() throws(StoreError) {}
}

extension SiteDatabase {
    /// The verdict on file `id` of `kind` and who sent it (the audit trail's actor of its outcome), for
    /// `GET /spool/{id}`; nil when the ledger has no such row.
    package func verdict(id: String, kind: String) async throws(PostgresStoreError) -> (
        report: FileReport, sender: String?
    )? {
        let logger = logger
        return try await transaction { connection in
            let rows = try await connection.query(
                """
                SELECT f.report, (SELECT a.actor FROM audit a WHERE a.target = f.id AND a.action LIKE 'file.%'
                                  ORDER BY a.seq LIMIT 1)
                FROM files f WHERE f.id = \(id) AND f.kind = \(kind)
                """,
                logger: logger
            )
            for try await (text, sender) in rows.decode((String, String?).self) {
                guard let report = FileReport(json: text) else { return nil }
                return (report, sender)
            }
            return nil
        }
    }

    /// Zoom's webhook counters (received, inserted per event name); answers only when the database does.
    package func zoomCounters() async throws(PostgresStoreError) -> [(event: String, received: Int, inserted: Int)] {
        let logger = logger
        return try await transaction { connection in
            let rows = try await connection.query(
                "SELECT event_name, received, inserted FROM zoom_counters ORDER BY event_name",
                logger: logger
            )
            var list: [(event: String, received: Int, inserted: Int)] = []
            for try await (name, received, inserted) in rows.decode((String, Int, Int).self) {
                list.append((name, received, inserted))
            }
            return list
        }
    }
}

/// A task executor on a serial Dispatch queue: tasks that prefer it never need a thread of Swift's
/// cooperative pool.
final class QueueExecutor: TaskExecutor, @unchecked Sendable {
    private let queue: DispatchQueue

    init(label: String) { queue = DispatchQueue(label: label) }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        queue.async { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}
