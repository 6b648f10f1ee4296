#if canImport(Glibc)
    import Glibc
#endif

/// Discovery and claims: what an inbox holds, and the rename into processing/ that is the lock.
extension Spool {
    /// Whether `folder` is one of the inboxes (checked for replacement at every scan).
    private func isInbox(_ folder: String) -> Bool { inboxes.contains { $0.path == folder } }

    /// Calls `body` with each entry of `folder` (its name's bytes and readdir's type and inode), "." and
    /// ".." excluded, through a fresh open of the folder's descriptor (no shared offset between scanners).
    func forEachEntry(
        _ folder: String,
        _ body: (_ fd: Int32, _ bytes: [UInt8], _ type: UInt8, _ inode: UInt64) -> Void
    ) throws(SpoolError) {
        if isInbox(folder) { try folders.checkIdentity(folder) }
        let base: Int32
        do {
            base = try folders.descriptor(folder)
        } catch {
            if error.code == ENOENT { return }
            throw error
        }
        let fd = openat(base, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0, let dir = fdopendir(fd) else {
            let code = errno
            throw SpoolError("scan", folder, code)
        }
        defer { closedir(dir) }
        while let ent = readdir(dir) {
            let bytes = Self.nameBytes(ent)
            if bytes == [0x2E] || bytes == [0x2E, 0x2E] { continue }
            body(base, bytes, ent.pointee.d_type, UInt64(ent.pointee.d_ino))
        }
    }

    /// The entries of `folder` a claimer may look at: incomplete names skipped, types from lstat(2).
    /// With `withStat` false, entries whose type readdir(3) reports come without size and mtime (-1):
    /// enough for names already known complete, and much cheaper for a full inbox.
    /// Names are kept as bytes (``Entry/bytes``): any name, UTF-8 or not, can be claimed.
    package func scan(_ folder: String, withStat: Bool = true) throws(SpoolError) -> [Entry] {
        var entries: [Entry] = []
        try forEachEntry(folder) { fd, bytes, type, inode in
            if Self.isIncompleteName(bytes) { return }
            if !withStat, type != UInt8(DT_UNKNOWN) {
                entries.append(
                    Entry(
                        name: SpoolName.display(bytes),
                        bytes: bytes,
                        type: FileType(direntType: type),
                        size: -1,
                        mtime: -1,
                        inode: inode
                    )
                )
                return
            }
            if let entry = Self.entry(in: fd, bytes) { entries.append(entry) }
        }
        return entries
    }

    /// One entry of folder `fd` with its lstat(2) type, size and mtime; nil when it is gone.
    static func entry(in fd: Int32, _ bytes: [UInt8]) -> Entry? {
        var st = stat()
        guard withCName(bytes, { fstatat(fd, $0, &st, AT_SYMLINK_NOFOLLOW) }) == 0 else { return nil }
        return Entry(
            name: SpoolName.display(bytes),
            bytes: bytes,
            type: FileType(mode: st.st_mode),
            size: Int64(st.st_size),
            mtime: nanoseconds(st.st_mtim),
            inode: UInt64(st.st_ino),
            ctime: nanoseconds(st.st_ctim)
        )
    }

    /// One entry of `folder` by name bytes, with its lstat(2) type, size and mtime; nil when it is gone.
    package func entry(_ folder: String, _ bytes: [UInt8]) -> Entry? {
        guard let fd = try? folders.descriptor(folder) else { return nil }
        return Self.entry(in: fd, bytes)
    }

    /// ``entry(_:_:)-([UInt8])`` by a name as text.
    package func entry(_ folder: String, _ name: String) -> Entry? { entry(folder, Array(name.utf8)) }

    /// Claims `name` from `inbox` (see ``claim(_:from:id:)-(Entry,_,_)``).
    package func claim(_ name: String, from inbox: Inbox, id: String) throws(SpoolError) -> Claimed? {
        let bytes = Array(name.utf8)
        let entry = Entry(name: name, bytes: bytes, type: .unknown, size: -1, mtime: -1, inode: 0)
        return try claim(entry, from: inbox, id: id)
    }

    /// Claims `entry` from `inbox` by renaming it into processing/<kind>/ as `<id>--<name>`, its exact
    /// bytes renamed through the folders' descriptors. A name too long for `<id>--<name>` and its sidecars
    /// is shortened on disk, keeping its extension, and kept whole in a note beside it (read back by
    /// ``claimedFiles(kind:)``). Returns nil when the file is gone (another claimer won, or the writer
    /// renamed it away).
    ///
    /// A regular file that the daemon's own user (or root) wrote — an HTTP request, a `drop` — keeps the
    /// id it was given and answered with (``idAttribute``, else a request's name `<id>.json`) when
    /// `reuse` says that id is free; any other file, or one whose id is taken, is claimed under `fresh`.
    /// Partners cannot write files the daemon's user owns, so no partner chooses an id.
    package func claim(
        _ entry: Entry,
        from inbox: Inbox,
        id fresh: String,
        reuse: (String) -> Bool = { _ in false }
    ) throws(SpoolError) -> Claimed? {
        try folders.checkIdentity(inbox.path)
        let source = try folders.descriptor(inbox.path)
        let processing = processingPath(inbox.kind)
        let target = try folders.descriptor(processing)
        let original = entry.name
        var id = fresh
        var st = stat()
        var changed: Int64 = 0
        var sender: String?
        if Self.withCName(entry.bytes, { fstatat(source, $0, &st, AT_SYMLINK_NOFOLLOW) }) == 0 {
            // Another file under the name since the scan (its sender uploads the next one under the same
            // name): not the entry that settled — it has its own settling to do.
            if entry.inode != 0 && UInt64(st.st_ino) != entry.inode { return nil }
            changed = Self.nanoseconds(st.st_ctim)
            // Files the daemon's own user wrote may be HTTP requests naming their sender and their id.
            if (st.st_uid == getuid() || st.st_uid == 0) && FileType(mode: st.st_mode) == .regular {
                // One open for both attributes: this runs for every request claimed.
                let found = Self.attributes(in: source, entry.bytes, [Self.senderAttribute, Self.idAttribute])
                if st.st_uid == getuid() { sender = found[0] }
                let given = found[1] ?? (original.hasSuffix(".json") ? String(original.dropLast(5)) : "")
                if Self.isID(given) && given != fresh && reuse(given) { id = given }
            }
            if sender == nil { sender = Self.userName(st.st_uid) }
        }
        let stored = SpoolName.fit(original, prefixBytes: id.utf8.count + SpoolName.separator.utf8.count)
        if stored != original {
            try writeFileDurably(
                bytes: Array(original.utf8),
                into: processing,
                as: SpoolName.nameNote(id: id),
                mode: 0o600
            )
        }
        // Written before the claim, like the name's: a crash between leaves a note with no file (removed at
        // the next scan), never a file without its note.
        if let note = inbox.note {
            try writeFileDurably(
                bytes: Array(note.utf8),
                into: processing,
                as: SpoolName.inboxNote(id: id),
                mode: 0o600
            )
        }
        let spoolName = SpoolName.claimed(id: id, name: stored)
        if Self.withCName(entry.bytes, { renameat(source, $0, target, spoolName) }) != 0 {
            let code = errno
            if stored != original { unlinkat(target, SpoolName.nameNote(id: id), 0) }
            if inbox.note != nil { unlinkat(target, SpoolName.inboxNote(id: id), 0) }
            if code == ENOENT { return nil }
            throw SpoolError("claim", inbox.path, code)
        }
        var claimed = Claimed(
            id: id,
            kind: inbox.kind,
            originalName: original,
            storedName: stored,
            path: processing + "/" + spoolName,
            droppedAt: changed,
            sender: sender
        )
        claimed.inboxNote = inbox.note
        return claimed
    }

    /// Files already in processing/<kind>/ (left by a crash, or waiting for a retry), in id order, each
    /// with its whole original name (from its note when the name was shortened). Notes whose file is gone
    /// (a crash between the note and the claim) are removed.
    package func claimedFiles(kind: String) throws(SpoolError) -> [Claimed] {
        let folder = processingPath(kind)
        var names: [String] = []
        try forEachEntry(folder) { _, bytes, _, _ in names.append(SpoolName.display(bytes)) }
        var claimed: [Claimed] = []
        var ids = Set<String>()
        for name in names {
            guard !name.hasPrefix("."), let (id, stored) = SpoolName.parse(name) else { continue }
            ids.insert(id)
            let note = readSmallFile(folder, SpoolName.nameNote(id: id)).map { String(decoding: $0, as: UTF8.self) }
            var file = Claimed(
                id: id,
                kind: kind,
                originalName: note ?? stored,
                storedName: stored,
                path: folder + "/" + name
            )
            file.inboxNote = readSmallFile(folder, SpoolName.inboxNote(id: id)).map {
                String(decoding: $0, as: UTF8.self)
            }
            claimed.append(file)
        }
        if let fd = try? folders.descriptor(folder) {
            for name in names where name.hasPrefix(".") && (name.hasSuffix(".name") || name.hasSuffix(".inbox")) {
                let id = String(name.dropFirst().dropLast(name.hasSuffix(".name") ? 5 : 6))
                if !ids.contains(id) { unlinkat(fd, name, 0) }
            }
        }
        return claimed.sorted { $0.id < $1.id }
    }

    /// Every name in `folder` as text (``SpoolName/display(_:)``), dotfiles included ("." and ".."
    /// excluded); an empty list when the folder does not exist.
    package func scanAll(_ folder: String) throws(SpoolError) -> [String] {
        var names: [String] = []
        try forEachEntry(folder) { _, bytes, _, _ in names.append(SpoolName.display(bytes)) }
        return names
    }

    /// How many entries of `folder` wait for the pipeline: names writers use while a file is incomplete
    /// (dotfiles — rsync's temporaries, a `.gitkeep` — `*.tmp`, `*.part`, …) are never claimed, so they
    /// are not counted, nor are entries that cannot be claimed (reported once by the pipeline). The one
    /// count behind /health, the metrics, STATUS=, backpressure and `status`.
    package func pendingCount(_ folder: String) throws(SpoolError) -> Int {
        var count = 0
        try forEachEntry(folder) { _, bytes, _, inode in
            if Self.isIncompleteName(bytes) || folders.isUnclaimable(folder, inode: inode) { return }
            count += 1
        }
        return count
    }

    /// Files waiting in every inbox folder of `kind` (its spool inbox and any partner folder mapped to it).
    package func pendingInInboxes(of kind: String) throws(SpoolError) -> Int {
        var total = 0
        for inbox in inboxes where inbox.kind == kind {
            do throws(SpoolError) {
                total += try pendingCount(inbox.path)
            } catch {
                // A replaced inbox is no longer used (the daemon says so once); one not made yet (a kind
                // added by an upgrade, before the daemon's restart) holds nothing.
                guard error.isNotAFolderAnyMore || error.code == ENOENT else { throw error }
            }
        }
        return total
    }

    /// ``oldestPending(_:)`` over every inbox folder of `kind`.
    package func oldestInInboxes(of kind: String) throws(SpoolError) -> Int64? {
        var oldest: Int64?
        for inbox in inboxes where inbox.kind == kind {
            do throws(SpoolError) {
                if let arrived = try oldestPending(inbox.path) { oldest = min(oldest ?? arrived, arrived) }
            } catch {
                guard error.isNotAFolderAnyMore || error.code == ENOENT else { throw error }
            }
        }
        return oldest
    }

    /// When the longest-waiting of `folder`'s pending entries arrived (the same names as ``pendingCount(_:)``),
    /// as nanoseconds since the epoch, or nil when none waits. Arrival is the inode's change time, which
    /// the rename or link into the folder sets — not the mtime, which `rsync -t` and SFTP clients carry
    /// over from the sender.
    package func oldestPending(_ folder: String) throws(SpoolError) -> Int64? {
        var oldest: Int64?
        try forEachEntry(folder) { fd, bytes, _, inode in
            if Self.isIncompleteName(bytes) || folders.isUnclaimable(folder, inode: inode) { return }
            var st = stat()
            guard Self.withCName(bytes, { fstatat(fd, $0, &st, AT_SYMLINK_NOFOLLOW) }) == 0 else { return }
            let changed = Self.nanoseconds(st.st_ctim)
            oldest = min(oldest ?? changed, changed)
        }
        return oldest
    }

    /// Records that `entry` of `inbox` cannot be claimed (`error`: a permanent error renaming it, as
    /// ``SpoolError/summary``): it is no longer counted as pending, nor tried again while its inode stands in
    /// the folder. Returns true the first time, so that the caller reports it once.
    package func markUnclaimable(_ entry: Entry, in inbox: Inbox, error: String) -> Bool {
        folders.markUnclaimable(inbox.path, inode: entry.inode, error: error)
    }

    /// Whether `entry` of `inbox` was found unclaimable (by its inode).
    package func isUnclaimable(_ entry: Entry, in inbox: Inbox) -> Bool {
        folders.isUnclaimable(inbox.path, inode: entry.inode)
    }

    /// Forgets the unclaimable entries of `inbox` that a scan (`present`) no longer finds.
    package func pruneUnclaimable(in inbox: Inbox, present: [Entry]) {
        folders.pruneUnclaimable(inbox.path, present: Set(present.map(\.inode)))
    }

    /// Entries of every inbox that cannot be claimed (status, metrics).
    package var unclaimableCount: Int { folders.unclaimableTotal }

    /// The unclaimable entries as the state file `processing/unclaimable` holds them: a line each,
    /// `<inbox index> <inode> <error>` — no path, no name.
    package func unclaimableState() -> [UInt8] {
        var lines: [String] = []
        for (path, inodes) in folders.unclaimable {
            guard let index = inboxes.firstIndex(where: { $0.path == path }) else { continue }
            for (inode, error) in inodes.sorted(by: { $0.key < $1.key }) { lines.append("\(index) \(inode) \(error)") }
        }
        return Array(lines.sorted().map { $0 + "\n" }.joined().utf8)
    }

    /// Reads the daemon's unclaimable entries from its state file (another process: `carespool status`),
    /// so that its counts agree with the daemon's. Returns how many it read.
    @discardableResult
    package func loadUnclaimable() -> Int {
        guard let bytes = readState(SpoolName.unclaimableState) else { return 0 }
        var entries: [String: [UInt64: String]] = [:]
        var count = 0
        for line in bytes.split(separator: 0x0A) {
            let fields = line.split(separator: 0x20, maxSplits: 2).map { String(decoding: $0, as: UTF8.self) }
            guard fields.count == 3, let index = Int(fields[0]), inboxes.indices.contains(index),
                let inode = UInt64(fields[1])
            else { continue }
            entries[inboxes[index].path, default: [:]][inode] = fields[2]
            count += 1
        }
        folders.setUnclaimable(entries)
        return count
    }

    /// Calls `body` with `bytes` as a NUL-terminated C string.
    static func withCName<T>(_ bytes: [UInt8], _ body: (UnsafePointer<CChar>) -> T) -> T {
        (bytes + [0]).withUnsafeBufferPointer { buffer in
            buffer.withMemoryRebound(to: CChar.self) { body($0.baseAddress!) }
        }
    }

    /// The values of extended attributes `names` of entry `bytes` of folder `fd` (a regular file, opened
    /// once O_NOFOLLOW|O_NONBLOCK), each nil where it has none.
    static func attributes(in fd: Int32, _ bytes: [UInt8], _ names: [String]) -> [String?] {
        let none = [String?](repeating: nil, count: names.count)
        guard let get = XAttr.fget else { return none }
        let file = withCName(bytes) { openat(fd, $0, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC) }
        guard file >= 0 else { return none }
        defer { close(file) }
        var buffer = [UInt8](repeating: 0, count: 256)
        return names.map { name in
            let count = buffer.withUnsafeMutableBytes { get(file, name, $0.baseAddress, $0.count) }
            return count > 0 ? String(decoding: buffer[..<count], as: UTF8.self) : nil
        }
    }

    /// The first 4 KiB of `<folder>/<name>` (opened O_NOFOLLOW), or nil when there is no such file.
    func readSmallFile(_ folder: String, _ name: String) -> [UInt8]? {
        guard let dir = try? folders.descriptor(folder) else { return nil }
        let fd = openat(dir, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let count = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        guard count >= 0 else { return nil }
        return Array(buffer[..<count])
    }
}
