import CRename

#if canImport(Glibc)
    import Glibc
#endif

/// Finishing a claimed file (sidecars, then the rename into done/ or failed/), an operator's requeue, and
/// the purge of done/ past retention.
extension Spool {
    /// Finishes a claimed file: writes its sidecars (each `<id>--<name><suffix>` in failed/<kind>/, by
    /// tmp + fsync + rename), then renames the file into `destination`. Returns the folders whose entries
    /// changed; pass them to ``syncDirectories(_:)`` (once per batch) to make the moves durable.
    package func finish(
        _ file: Claimed,
        to destination: Destination,
        sidecars: [(suffix: String, bytes: [UInt8])]
    ) throws(SpoolError) -> Set<String> {
        var touched: Set<String> = []
        let failed = failedPath(file.kind)
        for sidecar in sidecars {
            try writeFileDurably(bytes: sidecar.bytes, into: failed, as: file.spoolName + sidecar.suffix)
            touched.insert(failed)
        }
        let folder: String
        switch destination {
        case .done(let day):
            let kindFolder = donePath(file.kind)
            let parent = try folders.descriptor(kindFolder)
            if mkdirat(parent, day, 0o750) != 0 && errno != EEXIST { throw SpoolError("mkdir", kindFolder, errno) }
            folder = kindFolder + "/" + day
        case .failed:
            folder = failed
        }
        let processing = processingPath(file.kind)
        let from = try folders.descriptor(processing)
        let to = try folders.descriptor(folder)
        if renameat(from, file.spoolName, to, file.spoolName) != 0 {
            throw SpoolError("finish", file.path, errno)
        }
        if file.storedName != file.originalName { unlinkat(from, SpoolName.nameNote(id: file.id), 0) }
        if file.inboxNote != nil {
            // A failed file keeps it (a dotfile beside it), so that `retry` can tell whether the spool's own
            // inbox reads it as its inbox did; a finished one needs it no more.
            var kept = false
            if case .failed = destination, let to = try? folders.descriptor(folder) {
                kept = renameat(from, SpoolName.inboxNote(id: file.id), to, SpoolName.inboxNote(id: file.id)) == 0
            }
            if !kept { unlinkat(from, SpoolName.inboxNote(id: file.id), 0) }
        }
        touched.insert(folder)
        touched.insert(processing)
        return touched
    }

    /// ``finish(_:to:sidecars:)`` with sidecars already written (and closed) as temporary files.
    package func finish(
        _ file: Claimed,
        to destination: Destination,
        sidecars: [(suffix: String, bytes: [UInt8])],
        sidecarFiles: [(suffix: String, temporary: TemporaryFile)]
    ) throws(SpoolError) -> Set<String> {
        let failed = failedPath(file.kind)
        for sidecar in sidecarFiles {
            try place(sidecar.temporary.name, into: failed, as: file.spoolName + sidecar.suffix)
        }
        var touched = try finish(file, to: destination, sidecars: sidecars)
        if !sidecarFiles.isEmpty { touched.insert(failed) }
        return touched
    }

    /// Moves `failed/<kind>/<id>--<name>` back to `inbox/<kind>/<name>` for another try, never replacing
    /// a file of that name in the inbox. Its `.error.json` and `.rejected.*` sidecars are removed.
    /// The inbox note a failed file kept (``Claimed/inboxNote``), and its kind; nil when it has none.
    package func failedInboxNote(id: String) -> (kind: String, note: String)? {
        for kind in kinds {
            if let bytes = readSmallFile(failedPath(kind), SpoolName.inboxNote(id: id)) {
                return (kind, String(decoding: bytes, as: UTF8.self))
            }
        }
        return nil
    }

    /// The names in failed/ of a partial file's sidecars, when `id` has only those there (its file is in
    /// done/: its good records are stored): not a file to requeue. nil otherwise.
    package func partialSidecars(id: String) throws(SpoolError) -> [String]? {
        for kind in kinds {
            let mine = try scanAll(failedPath(kind)).filter { $0.hasPrefix(id + SpoolName.separator) }
            guard !mine.isEmpty else { continue }
            // A file's sidecars are its name and a suffix: some name that all the others extend is the file.
            let file = mine.first { name in mine.allSatisfy { $0 == name || $0.hasPrefix(name + ".") } }
            return file == nil ? mine.sorted() : nil
        }
        return nil
    }

    package func requeue(id: String) throws(SpoolError) -> (kind: String, name: String)? {
        // A partial file's sidecars are not its file (found by the hostile review: `retry` moved a
        // `.error.json` into the inbox, to be read as a report).
        if try partialSidecars(id: id) != nil { return nil }
        for kind in kinds {
            let folder = failedPath(kind)
            let names = try scanAll(folder)
            for name in SpoolName.files(among: names) where name.hasPrefix(id + SpoolName.separator) {
                guard let (_, original) = SpoolName.parse(name) else { continue }
                let from = try folders.descriptor(folder)
                let to = try folders.descriptor(inboxPath(kind))
                // renameat2(RENAME_NOREPLACE): link(2) is refused (EPERM) for a partner's file that the
                // daemon may not write when fs.protected_hardlinks is on — a file left 0644 by its sender
                // could never be retried. link + unlink only where the filesystem cannot do it.
                if carespool_rename_noreplace(from, name, to, original) != 0 {
                    let code = errno
                    guard code == EINVAL || code == ENOSYS else { throw SpoolError("move", inboxPath(kind), code) }
                    if linkat(from, name, to, original, 0) != 0 { throw SpoolError("move", inboxPath(kind), errno) }
                    if unlinkat(from, name, 0) != 0 { throw SpoolError("move", folder, errno) }
                }
                for sidecar in try scanAll(folder) where sidecar.hasPrefix(name + ".") {
                    unlinkat(from, sidecar, 0)
                }
                unlinkat(from, SpoolName.inboxNote(id: id), 0)
                try Self.syncDirectory(inboxPath(kind))
                try Self.syncDirectory(folder)
                return (kind, original)
            }
        }
        return nil
    }

    /// The UTC day (yyyy-mm-dd) `days` days before now: finished files of earlier days are purged.
    package static func cutoffDay(daysAgo days: Int) -> String {
        var seconds = time(nil) - time_t(days) * 86_400
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func two(_ n: Int32) -> String { n < 10 ? "0\(n)" : "\(n)" }
        return "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))"
    }

    /// Removes the `done/<kind>/<day>/` folders of days before `cutoffDay` (yyyy-mm-dd), their files
    /// first (ledger rows are the database's and stay). Only folders named like a day are touched.
    /// Returns the folders removed and the files in them; with `dryRun`, removes nothing.
    package func purgeDone(before cutoffDay: String, dryRun: Bool = false) throws(SpoolError) -> (
        folders: [String], files: Int
    ) {
        var removed: [String] = []
        var files = 0
        for kind in kinds {
            for day in try scanAll(donePath(kind)).sorted() where Self.isDayName(day) && day < cutoffDay {
                let folder = donePath(kind) + "/" + day
                var names: [[UInt8]] = []
                try forEachEntry(folder) { _, bytes, _, _ in names.append(bytes) }
                if !dryRun {
                    let fd = try folders.descriptor(folder)
                    for name in names where Self.withCName(name, { unlinkat(fd, $0, 0) }) != 0 && errno != ENOENT {
                        throw SpoolError("purge", folder, errno)
                    }
                    folders.forget(folder)
                    let parent = try folders.descriptor(donePath(kind))
                    if unlinkat(parent, day, AT_REMOVEDIR) != 0 && errno != ENOENT {
                        throw SpoolError("purge", folder, errno)
                    }
                }
                removed.append(kind + "/" + day)
                files += names.count
            }
        }
        if !dryRun && !removed.isEmpty {
            for kind in kinds { try Self.syncDirectory(donePath(kind)) }
        }
        return (removed, files)
    }

    static func isDayName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        guard bytes.count == 10, bytes[4] == 0x2D, bytes[7] == 0x2D else { return false }
        return bytes.enumerated().allSatisfy { $0.offset == 4 || $0.offset == 7 || (0x30...0x39).contains($0.element) }
    }
}
