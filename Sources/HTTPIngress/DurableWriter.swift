import Dispatch
import Metrics
package import Spool
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Writes request bodies into inboxes durably, two-phase, sharing the syncs among all the requests that
/// arrive while the previous group is being written (group commit):
/// 1. each request: its body to a fresh `tmp/.http-<random>` (and its idempotency key to `tmp/`), no sync;
/// 2. the group: one `syncfs(2)` of the spool's filesystem (every body's bytes durable), then each body
///    renamed into its inbox as `<id>.json` (a fresh id: no name to replace) and its key into `keys/`,
///    then one fsync per inbox folder touched (the renames durable);
/// 3. only then does each request's `await` return, and it may answer 202.
/// A rename never precedes its data's sync, so whatever fails — a crash, a power cut, a full disk — an
/// inbox never holds a partial request file.
/// An idempotency key already recorded for a request with another body: `id` is that request's.
package struct IdempotencyConflict: Error, Sendable {
    package let id: String
}

package final class DurableWriter: Sendable {
    private let spool: Spool
    private let ids = IDGenerator()
    private let io = DispatchQueue(label: "carespool.http.io", attributes: .concurrent)
    private let flusher = DispatchQueue(label: "carespool.http.fsync")
    private let waiting = Mutex<(list: [Waiter], scheduled: Bool)>(([], false))
    private let inFlight = Mutex<Set<String>>([])
    private let lastPurge = Mutex<Int64>(0)
    /// Each group's durability work by phase, and how many requests the groups carried: where a
    /// request's time goes between its bytes written and its 202 (docs/OPERATIONS.md, Metrics).
    private let syncTimers = (
        data: Timer(label: "carespool_http_sync_seconds", dimensions: [("phase", "data")]),
        rename: Timer(label: "carespool_http_sync_seconds", dimensions: [("phase", "rename")]),
        directories: Timer(label: "carespool_http_sync_seconds", dimensions: [("phase", "directories")])
    )
    private let syncedRequests = Counter(label: "carespool_http_synced_requests_total")

    /// A request waiting for the group's syncs: what to rename once its bytes are durable (nothing for
    /// a replay, which only waits), and whom to tell.
    private struct Waiter: Sendable {
        var body: (temporary: String, inbox: Spool.Inbox, name: String)?
        var key: (temporary: String, kind: String, name: String)?
        var done: @Sendable (SpoolError?) -> Void
    }

    package init(spool: Spool) { self.spool = spool }

    /// Writes `bytes` as `<id>.json` into `inbox`; returns the id once the file is on disk.
    package func write(_ bytes: [UInt8], into inbox: Spool.Inbox) async throws -> String {
        try await write(bytes, into: inbox, idempotencyKey: nil, sender: nil).id
    }

    /// Writes `bytes` as `<id>.json` into `inbox` and returns the id once the file is on disk. With an
    /// idempotency key (a file name, see ``Spool/keysPath(_:)``) already recorded, writes nothing and
    /// returns the recorded id with `replayed` true. Requests with the same key are serialised here; the
    /// key is renamed into place right after its request file, so a recorded key always names a file.
    ///
    /// A key already recorded for another body (`digest` differs) is an ``IdempotencyConflict``: the
    /// sender reused a key for new content, which would otherwise be dropped without a word.
    package func write(
        _ bytes: [UInt8],
        into inbox: Spool.Inbox,
        idempotencyKey: String?,
        digest: String? = nil,
        sender: String?
    ) async throws -> (id: String, replayed: Bool) {
        if let key = idempotencyKey {
            while !inFlight.withLock({ $0.insert(key).inserted }) { try await Task.sleep(for: .milliseconds(2)) }
        }
        defer { if let key = idempotencyKey { _ = inFlight.withLock { $0.remove(key) } } }
        purgeKeysIfDue()
        let id = ids.next()
        let spool = self.spool
        let replayedID: String? = try await withCheckedThrowingContinuation { continuation in
            io.async {
                do {
                    if let key = idempotencyKey,
                        let (earlier, recorded) = try spool.idempotentID(kind: inbox.kind, name: key)
                    {
                        if let recorded, let digest, recorded != digest {
                            throw IdempotencyConflict(id: earlier)
                        }
                        // A replay waits for a sync all the same: the earlier request may still be waiting.
                        self.enqueue(
                            Waiter(body: nil, key: nil) { failure in
                                if let failure {
                                    continuation.resume(throwing: failure)
                                } else {
                                    continuation.resume(returning: earlier)
                                }
                            }
                        )
                        return
                    }
                    // A fresh random name in tmp/, created O_EXCL|O_NOFOLLOW (Spool.temporaryFile).
                    let file = try spool.temporaryFile("http")
                    let temporary = file.name
                    do {
                        // Who sent it travels with the file to the pipeline's audit row.
                        if let sender { file.setAttribute(Spool.senderAttribute, sender) }
                        // The id answered to the sender is the one the pipeline claims it under.
                        file.setAttribute(Spool.idAttribute, id)
                        try file.append(bytes)
                        try file.closeWithoutSync()
                    } catch {
                        file.discard()
                        throw error
                    }
                    var keyFile: (temporary: String, kind: String, name: String)?
                    if let key = idempotencyKey {
                        do {
                            keyFile = (try spool.prepareIdempotencyKey(id: id, digest: digest), inbox.kind, key)
                        } catch {
                            spool.removeTemporary(temporary)
                            throw error
                        }
                    }
                    self.enqueue(
                        Waiter(body: (temporary, inbox, Spool.requestName(id: id)), key: keyFile) { failure in
                            if let failure {
                                continuation.resume(throwing: failure)
                            } else {
                                continuation.resume(returning: nil)
                            }
                        }
                    )
                } catch {
                    continuation.resume(throwing: error)
                }
            }
        }
        return (replayedID ?? id, replayedID != nil)
    }

    /// Idempotency keys are kept for 7 days (senders retry for up to a few days), purged hourly.
    private func purgeKeysIfDue() {
        let now = Int64(time(nil))
        let due = lastPurge.withLock { last -> Bool in
            guard now - last >= 3_600 else { return false }
            last = now
            return true
        }
        if due { io.async { self.spool.purgeIdempotencyKeys(before: now - 7 * 86_400) } }
    }

    private func enqueue(_ waiter: Waiter) {
        let start = waiting.withLock { state -> Bool in
            state.list.append(waiter)
            if state.scheduled { return false }
            state.scheduled = true
            return true
        }
        if start { flusher.async { self.flush() } }
    }

    /// Phase 2 for everyone waiting; requests arriving meanwhile wait for the next group.
    private func flush() {
        let batch = waiting.withLock { state -> [Waiter] in
            let taken = state.list
            state = ([], false)
            return taken
        }
        let started = Clock.monotonicNanos()
        // The bytes first: nothing is renamed into an inbox before its data is durable.
        let syncFailure = syncFilesystem()
        let synced = Clock.monotonicNanos()
        syncTimers.data.recordNanoseconds(synced - started)
        syncedRequests.increment(by: batch.count)
        if let failure = syncFailure {
            for waiter in batch {
                if let body = waiter.body { spool.removeTemporary(body.temporary) }
                if let key = waiter.key { spool.removeTemporary(key.temporary) }
                waiter.done(failure)
            }
            return
        }
        var failures: [SpoolError?] = []
        var folders = Set<String>()
        for waiter in batch {
            guard let body = waiter.body else {
                failures.append(nil)
                continue
            }
            do {
                try spool.publish(temporaryName: body.temporary, into: body.inbox, as: body.name)
                folders.insert(body.inbox.path)
                if let key = waiter.key {
                    try spool.publishIdempotencyKey(temporaryName: key.temporary, kind: key.kind, name: key.name)
                    folders.insert(spool.keysPath(key.kind))
                }
                failures.append(nil)
            } catch {
                spool.removeTemporary(body.temporary)
                if let key = waiter.key { spool.removeTemporary(key.temporary) }
                failures.append(error)
            }
        }
        let renamed = Clock.monotonicNanos()
        syncTimers.rename.recordNanoseconds(renamed - synced)
        // Then the renames: one fsync per folder touched.
        var folderFailure: SpoolError?
        for folder in folders.sorted() {
            do {
                try Spool.syncDirectory(folder)
            } catch {
                folderFailure = error
            }
        }
        syncTimers.directories.recordNanoseconds(Clock.monotonicNanos() - renamed)
        for (waiter, failure) in zip(batch, failures) {
            waiter.done(failure ?? (waiter.body == nil ? nil : folderFailure))
        }
    }

    private func syncFilesystem() -> SpoolError? {
        let fd = open(spool.root, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return SpoolError("syncfs", spool.root, errno) }
        defer { close(fd) }
        return Self.syncfs(fd) == 0 ? nil : SpoolError("syncfs", spool.root, errno)
    }

    /// glibc's syncfs(2), which Swift's Glibc module does not export (it is a GNU extension).
    private static let syncfs: @convention(c) (Int32) -> Int32 = {
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "syncfs") else {
            // Without syncfs: sync(2) flushes every filesystem — slower, never less durable.
            return { _ in
                sync()
                return 0
            }
        }
        return unsafeBitCast(symbol, to: (@convention(c) (Int32) -> Int32).self)
    }()
}
