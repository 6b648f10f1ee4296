#if canImport(Glibc)
    import Glibc
#endif

/// Files the daemon itself drops into its inboxes (the HTTP door, `carespool drop`) and the HTTP
/// senders' idempotency keys.
extension Spool {
    /// Drops `bytes` into an inbox as a producer should: a fresh temporary file, fdatasync, then into the
    /// inbox as `name` without replacing a file of that name (link + unlink), then fsync of the inbox.
    package func drop(bytes: [UInt8], into inbox: Inbox, name: String, id: String? = nil) throws(SpoolError) {
        let file = try temporaryFile("drop")
        do throws(SpoolError) {
            // The id `drop` prints is the one the pipeline claims it under (``Spool/idAttribute``).
            if let id { file.setAttribute(Self.idAttribute, id) }
            try file.append(bytes)
            try file.close()
            let from = try folders.descriptor(tmpPath)
            let to = try folders.descriptor(inbox.path)
            if linkat(from, file.name, to, name, 0) != 0 { throw SpoolError("move", inbox.path, errno) }
        } catch {
            file.discard()
            throw error
        }
        removeTemporary(file.name)
        try Self.syncDirectory(inbox.path)
    }

    /// Renames `tmp/<temporaryName>` into `inbox` as `name`. For names that are new by construction (a
    /// fresh id) only: rename(2) gives the watcher an IN_MOVED_TO, so the file is claimed at once, where a
    /// no-replace link(2) would only say IN_CREATE and wait for the settle interval.
    package func publish(temporaryName: String, into inbox: Inbox, as name: String) throws(SpoolError) {
        // Never into an inbox replaced after start: the pipeline no longer reads it, and a file placed
        // there through the old descriptor would be answered 202 and never processed.
        try folders.checkIdentity(inbox.path)
        try place(temporaryName, into: inbox.path, as: name)
    }

    /// The name the HTTP door gives a request file: `<id>.json`.
    package static func requestName(id: String) -> String { id + ".json" }

    /// The spool id recorded for idempotency key file `name` of `kind`, and the digest of the body it
    /// was recorded for (nil in a key written before digests were kept); nil when there is none.
    package func idempotentID(kind: String, name: String) throws(SpoolError) -> (id: String, digest: String?)? {
        let folder = try folders.descriptor(keysPath(kind))
        let fd = openat(folder, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else {
            if errno == ENOENT { return nil }
            throw SpoolError("open", keysPath(kind), errno)
        }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 256)
        let count = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        guard count > 0 else { return nil }
        let lines = buffer[..<count].split(separator: 0x0A, omittingEmptySubsequences: false)
        let id = String(decoding: lines[0], as: UTF8.self)
        let digest = lines.count > 1 && !lines[1].isEmpty ? String(decoding: lines[1], as: UTF8.self) : nil
        return (id, digest)
    }

    /// Writes `id` and the `digest` of its body to a temporary key file in tmp/ (not synced: the caller
    /// syncs the filesystem before ``publishIdempotencyKey(temporaryName:kind:name:)``); returns its name
    /// there.
    package func prepareIdempotencyKey(id: String, digest: String? = nil) throws(SpoolError) -> String {
        let file = try temporaryFile("key", mode: 0o600)
        do throws(SpoolError) {
            try file.append(Array((id + (digest.map { "\n" + $0 } ?? "")).utf8))
            try file.closeWithoutSync()
        } catch {
            file.discard()
            throw error
        }
        return file.name
    }

    /// Renames a prepared key file into `keys/<kind>/<name>` (made durable by the caller's folder fsync).
    package func publishIdempotencyKey(temporaryName: String, kind: String, name: String) throws(SpoolError) {
        try place(temporaryName, into: keysPath(kind), as: name)
    }

    /// Removes idempotency keys last written before `cutoff` (epoch seconds); returns how many.
    @discardableResult
    package func purgeIdempotencyKeys(before cutoff: Int64) -> Int {
        var removed = 0
        for kind in kinds {
            guard let fd = try? folders.descriptor(keysPath(kind)) else { continue }
            for entry in (try? scan(keysPath(kind))) ?? [] where entry.mtime < cutoff * 1_000_000_000 {
                if Self.withCName(entry.bytes, { unlinkat(fd, $0, 0) }) == 0 { removed += 1 }
            }
        }
        return removed
    }

    /// Whether request file `name` (``requestName(id:)``) of `kind` waits in its inbox, or file `id` is in
    /// processing/: what `GET /spool/{id}` says before the ledger has a row.
    package func requestState(kind: String, name: String, id: String) -> (inInbox: Bool, inProcessing: Bool) {
        let inInbox = ((try? scanAll(inboxPath(kind))) ?? []).contains(name)
        let inProcessing = ((try? scanAll(processingPath(kind))) ?? []).contains { SpoolName.parse($0)?.id == id }
        return (inInbox, inProcessing)
    }
}
