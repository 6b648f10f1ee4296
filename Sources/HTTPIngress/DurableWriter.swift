import Dispatch
package import Spool
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Writes request bodies into inboxes durably, sharing one `syncfs(2)` among all the requests that
/// arrive while the previous one runs (group commit): tmp file → rename into the inbox (a fresh id: no
/// name to replace)
/// → syncfs of the spool's filesystem → only then the caller's `await` returns and it may answer 202.
package final class DurableWriter: Sendable {
    private let spool: Spool
    private let ids = IDGenerator()
    private let io = DispatchQueue(label: "carespool.http.io", attributes: .concurrent)
    private let flusher = DispatchQueue(label: "carespool.http.fsync")
    private let waiting = Mutex<(list: [@Sendable (SpoolError?) -> Void], scheduled: Bool)>(([], false))
    private let inFlight = Mutex<Set<String>>([])
    private let lastPurge = Mutex<Int64>(0)

    package init(spool: Spool) { self.spool = spool }

    /// Writes `bytes` as `<id>.json` into `inbox`; returns the id once the file is on disk.
    package func write(_ bytes: [UInt8], into inbox: Spool.Inbox) async throws -> String {
        try await write(bytes, into: inbox, idempotencyKey: nil, sender: nil).id
    }

    /// Writes `bytes` as `<id>.json` into `inbox` and returns the id once the file is on disk. With an
    /// idempotency key (a file name, see ``Spool/keysPath(_:)``) already recorded, writes nothing and
    /// returns the recorded id with `replayed` true. Requests with the same key are serialised here; the
    /// key is recorded after its request file is published, so a recorded key always names a file.
    package func write(_ bytes: [UInt8], into inbox: Spool.Inbox, idempotencyKey: String?, sender: String?)
        async throws -> (id: String, replayed: Bool)
    {
        if let key = idempotencyKey {
            while !inFlight.withLock({ $0.insert(key).inserted }) { try await Task.sleep(for: .milliseconds(2)) }
        }
        defer { if let key = idempotencyKey { _ = inFlight.withLock { $0.remove(key) } } }
        purgeKeysIfDue()
        let id = ids.next()
        let replayedID: String? = try await withCheckedThrowingContinuation { continuation in
            io.async {
                let earlier: String?
                do {
                    earlier = try self.publish(
                        bytes,
                        id: id,
                        into: inbox,
                        idempotencyKey: idempotencyKey,
                        sender: sender
                    )
                } catch {
                    continuation.resume(throwing: error)
                    return
                }
                // A replay waits for a sync all the same: the earlier request may still be waiting for its own.
                self.afterNextSync { failure in
                    if let failure {
                        continuation.resume(throwing: failure)
                    } else {
                        continuation.resume(returning: earlier)
                    }
                }
            }
        }
        return (replayedID ?? id, replayedID != nil)
    }

    /// tmp file → rename into the inbox → key recorded; or, for a key already recorded, its id.
    private func publish(
        _ bytes: [UInt8],
        id: String,
        into inbox: Spool.Inbox,
        idempotencyKey: String?,
        sender: String?
    ) throws -> String? {
        if let key = idempotencyKey, let earlier = try spool.idempotentID(kind: inbox.kind, name: key) {
            return earlier
        }
        let temporary = ".http-" + id
        let file = try spool.temporaryFile(temporary)
        do {
            // Who sent it travels with the file to the pipeline's audit row.
            if let sender { file.setAttribute(Spool.senderAttribute, sender) }
            try file.append(bytes)
            try file.closeWithoutSync()
        } catch {
            file.discard()
            throw error
        }
        try spool.publish(temporaryName: temporary, into: inbox, as: id + ".json")
        if let key = idempotencyKey { try spool.recordIdempotencyKey(kind: inbox.kind, name: key, id: id) }
        return nil
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

    /// Calls `done` after the next syncfs (with its failure, if any).
    private func afterNextSync(_ done: @escaping @Sendable (SpoolError?) -> Void) {
        let start = waiting.withLock { state -> Bool in
            state.list.append(done)
            if state.scheduled { return false }
            state.scheduled = true
            return true
        }
        if start { flusher.async { self.flush() } }
    }

    /// One syncfs for everyone waiting; requests arriving meanwhile wait for the next one.
    private func flush() {
        let batch = waiting.withLock { state -> [@Sendable (SpoolError?) -> Void] in
            let taken = state.list
            state = ([], false)
            return taken
        }
        let fd = open(spool.root, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        var failure: SpoolError?
        if fd < 0 {
            failure = SpoolError("syncfs", spool.root, errno)
        } else {
            if Self.syncfs(fd) != 0 { failure = SpoolError("syncfs", spool.root, errno) }
            close(fd)
        }
        for done in batch { done(failure) }
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
