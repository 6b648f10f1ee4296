// Spool: the spool directory's layout and every move a file makes through it.
//
// The ONLY code that renames spool files. Knows files and folders, never payloads or the database.
// Trusts nothing it finds in an inbox: names are opaque bytes, and only regular files are ever opened
// (a symlink, FIFO, socket, device or directory is never followed or read).
//
// Layout (DESIGN.md, with processing/ split by kind so that recovery knows a claimed file's kind):
//   tmp/                       our own writes, fsynced, then renamed into place
//   inbox/<kind>/              producers drop files here; we only ever rename out of it
//   processing/<kind>/         claimed files: <id>--<original name>
//   done/<kind>/<yyyy-mm-dd>/  <id>--<original name>
//   failed/<kind>/             <id>--<original name>, <same>.error.json, <same>.rejected.<ext>

import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A spool directory tree.
package struct Spool: Sendable {
    /// An inbox folder and the kind of data dropped into it.
    package struct Inbox: Sendable, Hashable {
        package var path: String
        package var kind: String

        package init(path: String, kind: String) {
            self.path = path
            self.kind = kind
        }
    }

    /// What a scan found in an inbox.
    package struct Entry: Sendable, Equatable {
        package var name: String
        package var type: FileType
        package var size: Int64
        /// Modification time in nanoseconds since the epoch.
        package var mtime: Int64
        package var inode: UInt64
    }

    /// A file's type as lstat(2) sees it (symlinks are never followed).
    package enum FileType: String, Sendable {
        case regular, directory, symlink, fifo, socket, characterDevice = "character device",
            blockDevice = "block device", unknown

        init(mode: mode_t) {
            switch mode & S_IFMT {
            case S_IFREG: self = .regular
            case S_IFDIR: self = .directory
            case S_IFLNK: self = .symlink
            case S_IFIFO: self = .fifo
            case S_IFSOCK: self = .socket
            case S_IFCHR: self = .characterDevice
            case S_IFBLK: self = .blockDevice
            default: self = .unknown
            }
        }
    }

    /// A file claimed into processing/.
    package struct Claimed: Sendable, Hashable {
        package var id: String
        package var kind: String
        package var originalName: String
        /// Its path under processing/.
        package var path: String
        /// Its name under processing/, `<id>--<original name>`.
        package var spoolName: String { id + "--" + originalName }
        /// When it was dropped: its inode's change time just before the claim (the rename or last write
        /// into the inbox), nanoseconds since the epoch; 0 when unknown (found in processing/ at start).
        package var droppedAt: Int64 = 0
        /// Who dropped it: the sender an HTTP request file names (``Spool/senderAttribute``), else the
        /// Unix user owning the file as claimed (`uid:N` when the user has no name); nil when unknown.
        package var sender: String?
    }

    /// The extended attribute in which the HTTP endpoint names a request file's sender.
    package static let senderAttribute = "user.carespool.sender"

    /// Where a finished file goes.
    package enum Destination: Sendable {
        /// done/<kind>/<day>/, `day` as yyyy-mm-dd.
        case done(day: String)
        case failed
    }

    /// A file's content, or why it has none.
    package enum Content: Sendable {
        case regular([UInt8])
        case notRegular(FileType)
    }

    /// The spool's root folder.
    package let root: String
    /// The spool's own inboxes, one per kind, plus any extra folders mapped to a kind.
    package let inboxes: [Inbox]
    package let kinds: [String]

    /// - Parameters:
    ///   - root: the spool folder.
    ///   - kinds: the data kinds; each gets `inbox/<kind>/` and its processing, done and failed folders.
    ///   - extraInboxes: more folders to watch (an SFTP partner's upload folder), each mapped to a kind.
    package init(root: String, kinds: [String], extraInboxes: [Inbox] = []) {
        let trimmed = root.count > 1 && root.hasSuffix("/") ? String(root.dropLast()) : root
        self.root = trimmed
        self.kinds = kinds
        self.inboxes = kinds.map { Inbox(path: trimmed + "/inbox/" + $0, kind: $0) } + extraInboxes
    }

    package var tmpPath: String { root + "/tmp" }
    package func processingPath(_ kind: String) -> String { root + "/processing/" + kind }
    package func donePath(_ kind: String) -> String { root + "/done/" + kind }
    package func failedPath(_ kind: String) -> String { root + "/failed/" + kind }
    package func inboxPath(_ kind: String) -> String { root + "/inbox/" + kind }
    /// Idempotency keys of HTTP senders (`webhook-id`), one small file per key holding the spool id.
    package func keysPath(_ kind: String) -> String { root + "/keys/" + kind }

    /// Creates every folder of the layout that is missing.
    package func prepare() throws(SpoolError) {
        var folders = [
            root, tmpPath, root + "/inbox", root + "/processing", root + "/done", root + "/failed", root + "/keys",
        ]
        for kind in kinds {
            folders += [inboxPath(kind), processingPath(kind), donePath(kind), failedPath(kind), keysPath(kind)]
        }
        folders += inboxes.map(\.path)
        for folder in folders { try Self.makeDirectory(folder) }
    }

    /// Whether `name` is a writer's name for an incomplete file: a dotfile (rsync's `.name.a1B2c3`),
    /// `*.tmp`, `*.part`, `*.filepart` or `*~`.
    package static func isIncompleteName(_ name: String) -> Bool {
        name.hasPrefix(".") || name.hasSuffix(".tmp") || name.hasSuffix(".part") || name.hasSuffix(".filepart")
            || name.hasSuffix("~")
    }

    /// The entries of `folder` a claimer may look at: incomplete names skipped, types from lstat(2).
    /// With `withStat` false, entries whose type readdir(3) reports come without size and mtime (-1):
    /// enough for names already known complete, and much cheaper for a full inbox.
    package func scan(_ folder: String, withStat: Bool = true) throws(SpoolError) -> [Entry] {
        guard let dir = opendir(folder) else { throw SpoolError("scan", folder, errno) }
        defer { closedir(dir) }
        var entries: [Entry] = []
        let dirFD = dirfd(dir)
        while let ent = readdir(dir) {
            let bytes = Self.nameBytes(ent)
            guard let name = String(validating: bytes, as: UTF8.self) else {
                // A name that is not UTF-8 could never be claimed by a String path: it is renamed in place
                // to its percent-escaped form (never replacing a file), and picked up by the next scan —
                // unless it is a writer's incomplete file, which is never touched (renaming it would break
                // the writer's own rename: found by the torture campaign).
                if !Self.isIncompleteName(String(decoding: bytes, as: UTF8.self)) {
                    Self.escapeName(bytes, in: dirFD)
                }
                continue
            }
            if name == "." || name == ".." || Self.isIncompleteName(name) { continue }
            if !withStat, ent.pointee.d_type != UInt8(DT_UNKNOWN) {
                // readdir's d_type is enough to tell a regular file; size and mtime are not needed.
                let type: FileType =
                    switch Int32(ent.pointee.d_type) {
                    case Int32(DT_REG): .regular
                    case Int32(DT_DIR): .directory
                    case Int32(DT_LNK): .symlink
                    case Int32(DT_FIFO): .fifo
                    case Int32(DT_SOCK): .socket
                    case Int32(DT_CHR): .characterDevice
                    case Int32(DT_BLK): .blockDevice
                    default: .unknown
                    }
                entries.append(Entry(name: name, type: type, size: -1, mtime: -1, inode: UInt64(ent.pointee.d_ino)))
                continue
            }
            var st = stat()
            guard fstatat(dirFD, name, &st, AT_SYMLINK_NOFOLLOW) == 0 else { continue }
            entries.append(
                Entry(
                    name: name,
                    type: FileType(mode: st.st_mode),
                    size: Int64(st.st_size),
                    mtime: Self.nanoseconds(st.st_mtim),
                    inode: UInt64(st.st_ino)
                )
            )
        }
        return entries
    }

    /// Claims `name` from `inbox` by renaming it into processing/<kind>/ as `<id>--<name>`.
    /// Returns nil when the file is gone (another claimer won, or the writer renamed it away).
    package func claim(_ name: String, from inbox: Inbox, id: String) throws(SpoolError) -> Claimed? {
        let kept = Self.fitName(name, prefixBytes: id.utf8.count + 2)
        let target = processingPath(inbox.kind) + "/" + id + "--" + kept
        var st = stat()
        let source = inbox.path + "/" + name
        var changed: Int64 = 0
        var sender: String?
        if lstat(source, &st) == 0 {
            changed = Self.nanoseconds(st.st_ctim)
            // Files the daemon's own user wrote may be HTTP requests naming their sender.
            if st.st_uid == getuid() { sender = Self.attribute(source, Self.senderAttribute) }
            if sender == nil { sender = Self.userName(st.st_uid) }
        }
        if rename(source, target) != 0 {
            let code = errno
            if code == ENOENT { return nil }
            throw SpoolError("claim", source, code)
        }
        return Claimed(id: id, kind: inbox.kind, originalName: kept, path: target, droppedAt: changed, sender: sender)
    }

    /// Files already in processing/<kind>/ (left by a crash, or waiting for a retry), in id order.
    package func claimedFiles(kind: String) throws(SpoolError) -> [Claimed] {
        let folder = processingPath(kind)
        return try scanAll(folder).compactMap { name -> Claimed? in
            guard let split = name.firstRange(of: "--") else { return nil }
            let id = String(name[..<split.lowerBound])
            let original = String(name[split.upperBound...])
            return Claimed(id: id, kind: kind, originalName: original, path: folder + "/" + name)
        }.sorted { $0.id < $1.id }
    }

    /// Reads a claimed file. Only a regular file is opened, with O_NOFOLLOW, and checked again by fstat(2).
    package func read(_ file: Claimed) throws(SpoolError) -> Content {
        var st = stat()
        guard lstat(file.path, &st) == 0 else { throw SpoolError("read", file.path, errno) }
        let type = FileType(mode: st.st_mode)
        guard type == .regular else { return .notRegular(type) }
        let fd = open(file.path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
        if fd < 0 {
            let code = errno
            if code == ELOOP { return .notRegular(.symlink) }
            throw SpoolError("read", file.path, code)
        }
        defer { close(fd) }
        guard fstat(fd, &st) == 0 else { throw SpoolError("read", file.path, errno) }
        guard FileType(mode: st.st_mode) == .regular else { return .notRegular(FileType(mode: st.st_mode)) }
        var bytes = [UInt8](repeating: 0, count: Int(st.st_size))
        var filled = 0
        while true {
            if filled == bytes.count { bytes.append(contentsOf: [UInt8](repeating: 0, count: max(4096, filled))) }
            let n = bytes.withUnsafeMutableBytes { raw in
                Glibc.read(fd, raw.baseAddress! + filled, raw.count - filled)
            }
            if n < 0 {
                if errno == EINTR { continue }
                throw SpoolError("read", file.path, errno)
            }
            if n == 0 { break }
            filled += n
        }
        bytes.removeSubrange(filled...)
        return .regular(bytes)
    }

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
            let target = failed + "/" + file.spoolName + sidecar.suffix
            try writeFileDurably(bytes: sidecar.bytes, temporaryName: file.id + sidecar.suffix, target: target)
            touched.insert(failed)
        }
        let folder: String
        switch destination {
        case .done(let day):
            folder = donePath(file.kind) + "/" + day
            try Self.makeDirectory(folder)
        case .failed:
            folder = failed
        }
        if rename(file.path, folder + "/" + file.spoolName) != 0 {
            throw SpoolError("finish", file.path, errno)
        }
        touched.insert(folder)
        touched.insert(processingPath(file.kind))
        return touched
    }

    /// Writes `bytes` to tmp/<temporaryName>, fsyncs it, and renames it to `target` (replacing it).
    package func writeFileDurably(bytes: [UInt8], temporaryName: String, target: String) throws(SpoolError) {
        let temporary = tmpPath + "/" + temporaryName
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw SpoolError("write", temporary, errno) }
        var written = 0
        while written < bytes.count {
            let n = bytes.withUnsafeBytes { raw in write(fd, raw.baseAddress! + written, raw.count - written) }
            if n < 0 {
                if errno == EINTR { continue }
                let code = errno
                close(fd)
                unlink(temporary)
                throw SpoolError("write", temporary, code)
            }
            written += n
        }
        if fdatasync(fd) != 0 {
            let code = errno
            close(fd)
            unlink(temporary)
            throw SpoolError("fsync", temporary, code)
        }
        close(fd)
        if rename(temporary, target) != 0 {
            let code = errno
            unlink(temporary)
            throw SpoolError("rename", target, code)
        }
    }

    /// Drops `bytes` into an inbox as a producer should: tmp/, fdatasync, rename into the inbox, fsync
    /// the inbox. Never replaces a file of the same name (link + unlink), and returns the name used.
    package func drop(bytes: [UInt8], into inbox: Inbox, name: String) throws(SpoolError) {
        let temporary = ".drop-" + name
        let path = tmpPath + "/" + temporary
        try writeFileDurably(bytes: bytes, temporaryName: temporary + ".w", target: path)
        try Self.moveWithoutReplacing(path, to: inbox.path + "/" + name)
        try Self.syncDirectory(inbox.path)
    }

    /// Moves `failed/<kind>/<id>--<name>` back to `inbox/<kind>/<name>` for another try, never replacing
    /// a file of that name in the inbox. Its `.error.json` and `.rejected.*` sidecars are removed.
    package func requeue(id: String) throws(SpoolError) -> (kind: String, name: String)? {
        for kind in kinds {
            let folder = failedPath(kind)
            for name in try scanAll(folder) where name.hasPrefix(id + "--") {
                if name.hasSuffix(".error.json") || name.contains(".rejected.") { continue }
                let original = String(name.dropFirst(id.count + 2))
                try Self.moveWithoutReplacing(folder + "/" + name, to: inboxPath(kind) + "/" + original)
                for sidecar in try scanAll(folder) where sidecar.hasPrefix(name + ".") {
                    unlink(folder + "/" + sidecar)
                }
                try Self.syncDirectory(inboxPath(kind))
                try Self.syncDirectory(folder)
                return (kind, original)
            }
        }
        return nil
    }

    /// Renames `tmp/<temporaryName>` into `inbox` as `name`. For names that are new by construction (a
    /// fresh id) only: rename(2) gives the watcher an IN_MOVED_TO, so the file is claimed at once, where a
    /// no-replace link(2) would only say IN_CREATE and wait for the settle interval.
    package func publish(temporaryName: String, into inbox: Inbox, as name: String) throws(SpoolError) {
        if rename(tmpPath + "/" + temporaryName, inbox.path + "/" + name) != 0 {
            throw SpoolError("rename", inbox.path + "/" + name, errno)
        }
    }

    /// The spool id recorded for idempotency key file `name` of `kind`, or nil when there is none.
    package func idempotentID(kind: String, name: String) throws(SpoolError) -> String? {
        let path = keysPath(kind) + "/" + name
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            if errno == ENOENT { return nil }
            throw SpoolError("open", path, errno)
        }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 64)
        let count = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        guard count > 0 else { return nil }
        return String(decoding: buffer[..<count], as: UTF8.self)
    }

    /// Writes `id` to a temporary key file in tmp/ (not synced: the caller syncs the filesystem before
    /// ``publishIdempotencyKey(temporaryName:kind:name:)``); returns its name there.
    package func prepareIdempotencyKey(id: String) throws(SpoolError) -> String {
        let temporary = ".key-" + id
        let file = try temporaryFile(temporary)
        do {
            try file.append(Array(id.utf8))
            try file.closeWithoutSync()
        } catch {
            file.discard()
            throw error
        }
        return temporary
    }

    /// Renames a prepared key file into `keys/<kind>/<name>` (made durable by the caller's folder fsync).
    package func publishIdempotencyKey(temporaryName: String, kind: String, name: String) throws(SpoolError) {
        if rename(tmpPath + "/" + temporaryName, keysPath(kind) + "/" + name) != 0 {
            throw SpoolError("rename", keysPath(kind) + "/" + name, errno)
        }
    }

    /// Removes idempotency keys last written before `cutoff` (epoch seconds); returns how many.
    @discardableResult
    package func purgeIdempotencyKeys(before cutoff: Int64) -> Int {
        var removed = 0
        for kind in kinds {
            for entry in (try? scan(keysPath(kind))) ?? [] where entry.mtime < cutoff * 1_000_000_000 {
                if unlink(keysPath(kind) + "/" + entry.name) == 0 { removed += 1 }
            }
        }
        return removed
    }

    /// The name of a directory entry, read only up to its NUL: a `dirent` returned by readdir(3) is only
    /// as long as its name, so loading the whole 256-byte `d_name` field could read past the end of the
    /// buffer (a SIGSEGV seen under load).
    static func nameBytes(_ entry: UnsafeMutablePointer<dirent>) -> [UInt8] {
        let offset = MemoryLayout<dirent>.offset(of: \dirent.d_name)!
        let name = UnsafeRawPointer(entry).advanced(by: offset).assumingMemoryBound(to: CChar.self)
        return Array(UnsafeRawBufferPointer(start: name, count: strlen(name)))
    }

    /// Nanoseconds since the epoch of a file time, saturated at Int64's ends: a file's times are whatever
    /// its writer set (`touch -d`, `rsync -t`, an SFTP client keeping the sender's mtime), and the year 5138
    /// overflowed the multiplication — a trap at every scan of its inbox (found by review after the fuzzer's
    /// find).
    static func nanoseconds(_ time: timespec) -> Int64 {
        let (whole, overflow) = Int64(time.tv_sec).multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return time.tv_sec < 0 ? Int64.min : Int64.max }
        let (sum, carry) = whole.addingReportingOverflow(Int64(time.tv_nsec))
        return carry ? Int64.max : sum
    }

    /// Renames the entry `bytes` (not UTF-8) of the folder `dirFD` to its percent-escaped form (bytes that
    /// are not printable ASCII, and `%`, as `%XX`), without replacing any file; a clash gets `.<inode>`.
    static func escapeName(_ bytes: [UInt8], in dirFD: Int32) {
        var escaped = ""
        for byte in bytes {
            if byte >= 0x20 && byte < 0x7F && byte != UInt8(ascii: "%") {
                escaped.append(Character(Unicode.Scalar(byte)))
            } else {
                escaped += "%" + (byte < 16 ? "0" : "") + String(byte, radix: 16, uppercase: true)
            }
        }
        var st = stat()
        let source = bytes.map { CChar(bitPattern: $0) } + [0]
        let inode = fstatat(dirFD, source, &st, AT_SYMLINK_NOFOLLOW) == 0 ? UInt64(st.st_ino) : 0
        for candidate in [escaped, escaped + ".\(inode)"] {
            if linkat(dirFD, source, dirFD, candidate, 0) == 0 {
                unlinkat(dirFD, source, 0)
                return
            }
            if errno != EEXIST { return }
        }
    }

    /// The value of extended attribute `name` of `path` (not following a symlink), if it has one.
    static func attribute(_ path: String, _ name: String) -> String? {
        var buffer = [UInt8](repeating: 0, count: 256)
        guard let get = XAttr.lget else { return nil }
        let count = buffer.withUnsafeMutableBytes { get(path, name, $0.baseAddress, $0.count) }
        guard count > 0 else { return nil }
        return String(decoding: buffer[..<count], as: UTF8.self)
    }

    /// The login name of `uid`, or `uid:N`.
    /// Every claim asks for its file owner's name; the password database is read once per uid.
    package static func userName(_ uid: UInt32) -> String {
        if let known = userNames.withLock({ $0[uid] }) { return known }
        let name = lookUpUserName(uid)
        userNames.withLock { $0[uid] = name }
        return name
    }

    private static let userNames = Mutex<[UInt32: String]>([:])

    private static func lookUpUserName(_ uid: UInt32) -> String {
        var entry = passwd()
        var result: UnsafeMutablePointer<passwd>?
        var buffer = [CChar](repeating: 0, count: 1024)
        if getpwuid_r(uid, &entry, &buffer, buffer.count, &result) == 0, let found = result,
            let name = found.pointee.pw_name
        {
            return String(cString: name)
        }
        return "uid:\(uid)"
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
        var folders: [String] = []
        var files = 0
        for kind in kinds {
            for day in try scanAll(donePath(kind)).sorted() where Self.isDayName(day) && day < cutoffDay {
                let folder = donePath(kind) + "/" + day
                let names = try scanAll(folder)
                if !dryRun {
                    for name in names where unlink(folder + "/" + name) != 0 && errno != ENOENT {
                        throw SpoolError("purge", folder + "/" + name, errno)
                    }
                    if rmdir(folder) != 0 && errno != ENOENT { throw SpoolError("purge", folder, errno) }
                }
                folders.append(kind + "/" + day)
                files += names.count
            }
        }
        if !dryRun && !folders.isEmpty {
            for kind in kinds { try Self.syncDirectory(donePath(kind)) }
        }
        return (folders, files)
    }

    static func isDayName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        guard bytes.count == 10, bytes[4] == 0x2D, bytes[7] == 0x2D else { return false }
        return bytes.enumerated().allSatisfy { $0.offset == 4 || $0.offset == 7 || (0x30...0x39).contains($0.element) }
    }

    /// fsyncs each folder, making renames into and out of it durable.
    package func syncDirectories(_ folders: Set<String>) throws(SpoolError) {
        for folder in folders.sorted() { try Self.syncDirectory(folder) }
    }

    /// Every name in `folder`, dotfiles included ("." and ".." excluded).
    package func scanAll(_ folder: String) throws(SpoolError) -> [String] {
        guard let dir = opendir(folder) else {
            if errno == ENOENT { return [] }
            throw SpoolError("list", folder, errno)
        }
        defer { closedir(dir) }
        var names: [String] = []
        while let ent = readdir(dir) {
            let name = String(decoding: Self.nameBytes(ent), as: UTF8.self)
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// How many entries of `folder` wait for the pipeline: names writers use while a file is incomplete
    /// (dotfiles — rsync's temporaries, a `.gitkeep` — `*.tmp`, `*.part`, …) are never claimed, so they
    /// are not counted. The one count behind /health, the metrics, STATUS=, backpressure and `status`.
    package func pendingCount(_ folder: String) throws(SpoolError) -> Int {
        try scanAll(folder).filter { !Self.isIncompleteName($0) }.count
    }

    /// Files waiting in every inbox folder of `kind` (its spool inbox and any partner folder mapped to it).
    package func pendingInInboxes(of kind: String) throws(SpoolError) -> Int {
        var total = 0
        for inbox in inboxes where inbox.kind == kind { total += try pendingCount(inbox.path) }
        return total
    }

    /// ``oldestPending(_:)`` over every inbox folder of `kind`.
    package func oldestInInboxes(of kind: String) throws(SpoolError) -> Int64? {
        var oldest: Int64?
        for inbox in inboxes where inbox.kind == kind {
            if let arrived = try oldestPending(inbox.path) { oldest = min(oldest ?? arrived, arrived) }
        }
        return oldest
    }

    /// When the longest-waiting of `folder`'s pending entries arrived (the same names as ``pendingCount(_:)``),
    /// as nanoseconds since the epoch, or nil when none waits. Arrival is the inode's change time, which
    /// the rename or link into the folder sets — not the mtime, which `rsync -t` and SFTP clients carry
    /// over from the sender.
    package func oldestPending(_ folder: String) throws(SpoolError) -> Int64? {
        var oldest: Int64?
        for name in try scanAll(folder) where !Self.isIncompleteName(name) {
            var st = stat()
            guard lstat(folder + "/" + name, &st) == 0 else { continue }  // gone since the listing
            let changed = Self.nanoseconds(st.st_ctim)
            oldest = min(oldest ?? changed, changed)
        }
        return oldest
    }

    /// rename(2) that never replaces: link(2) fails on an existing name, then the old name is unlinked.
    package static func moveWithoutReplacing(_ from: String, to: String) throws(SpoolError) {
        if link(from, to) != 0 { throw SpoolError("move", to, errno) }
        if unlink(from) != 0 { throw SpoolError("move", from, errno) }
    }

    package static func syncDirectory(_ folder: String) throws(SpoolError) {
        let fd = open(folder, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw SpoolError("fsync", folder, errno) }
        defer { close(fd) }
        if fsync(fd) != 0 { throw SpoolError("fsync", folder, errno) }
    }

    static func makeDirectory(_ path: String) throws(SpoolError) {
        if mkdir(path, 0o755) != 0 {
            let code = errno
            if code == EEXIST { return }
            if code == ENOENT {
                let parent = String(path[..<(path.lastIndex(of: "/") ?? path.startIndex)])
                guard !parent.isEmpty, parent != path else { throw SpoolError("mkdir", path, code) }
                try makeDirectory(parent)
                if mkdir(path, 0o755) != 0 && errno != EEXIST { throw SpoolError("mkdir", path, errno) }
                return
            }
            throw SpoolError("mkdir", path, code)
        }
    }

    /// Cuts `name` so that `<id>--<name>` plus the longest sidecar suffix fits in NAME_MAX (255 bytes).
    static func fitName(_ name: String, prefixBytes: Int) -> String {
        let limit = 255 - prefixBytes - ".rejected.ndjson".utf8.count
        guard name.utf8.count > limit else { return name }
        var cut = ""
        for scalar in name.unicodeScalars {
            if cut.utf8.count + String(scalar).utf8.count > limit { break }
            cut.unicodeScalars.append(scalar)
        }
        return cut
    }
}

/// A failed file-system operation: which, on what path, and errno.
package struct SpoolError: Error, Sendable, CustomStringConvertible {
    package var operation: String
    package var path: String
    package var code: Int32

    package init(_ operation: String, _ path: String, _ code: Int32) {
        self.operation = operation
        self.path = path
        self.code = code
    }

    /// Trouble that is no verdict on the file (disk full, I/O error, no permission yet): retry later.
    package var isTransient: Bool {
        [EIO, ENOSPC, EDQUOT, ENOMEM, EMFILE, ENFILE, EAGAIN, EINTR, EBUSY, EACCES, EPERM, EROFS].contains(code)
    }

    /// The errno name and text, e.g. `ENOSPC (No space left on device)`.
    package var reason: String {
        String(cString: strerror(code))
    }

    package var description: String { "\(operation) \(path): \(reason)" }
}

extension Spool {
    /// One entry of `folder` with its lstat(2) type, size and mtime; nil when it is gone.
    package func entry(_ folder: String, _ name: String) -> Entry? {
        var st = stat()
        guard lstat(folder + "/" + name, &st) == 0 else { return nil }
        return Entry(
            name: name,
            type: FileType(mode: st.st_mode),
            size: Int64(st.st_size),
            mtime: Self.nanoseconds(st.st_mtim),
            inode: UInt64(st.st_ino)
        )
    }
}

extension Spool {
    /// Calls `body` with successive chunks (at most `chunkSize` bytes) of a claimed regular file, opened
    /// with O_NOFOLLOW: memory stays bounded whatever the file's size.
    package func readChunks(
        _ file: Claimed,
        chunkSize: Int = 1 << 20,
        _ body: (ArraySlice<UInt8>) throws -> Void
    ) throws -> Void {
        let fd = open(file.path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { throw SpoolError("read", file.path, errno) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw SpoolError("read", file.path, errno) }
        guard FileType(mode: st.st_mode) == .regular else { throw SpoolError("read", file.path, EINVAL) }
        var buffer = [UInt8](repeating: 0, count: chunkSize)
        while true {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress!, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw SpoolError("read", file.path, errno)
            }
            if n == 0 { return }
            try body(buffer[0..<n])
        }
    }

    /// A file being written under tmp/, to become a sidecar with ``finish(_:to:sidecars:sidecarFiles:)``.
    package final class TemporaryFile {
        package let name: String
        private let fd: Int32
        private let path: String
        private var closed = false

        init(spool: Spool, name: String) throws(SpoolError) {
            self.name = name
            path = spool.tmpPath + "/" + name
            fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
            guard fd >= 0 else { throw SpoolError("write", path, errno) }
        }

        /// Test-only fault injection, for disk-full tests where a small filesystem cannot be mounted: while
        /// the file named by `CARESPOOL_TEST_ENOSPC_WHILE` exists, every append fails with ENOSPC.
        private static let enospcSwitch: String? = getenv("CARESPOOL_TEST_ENOSPC_WHILE").map { String(cString: $0) }

        package func append(_ bytes: [UInt8]) throws(SpoolError) {
            if let path = Self.enospcSwitch, access(path, F_OK) == 0 { throw SpoolError("write", self.path, ENOSPC) }
            var written = 0
            while written < bytes.count {
                let n = bytes.withUnsafeBytes { raw in write(fd, raw.baseAddress! + written, raw.count - written) }
                if n < 0 {
                    if errno == EINTR { continue }
                    throw SpoolError("write", path, errno)
                }
                written += n
            }
        }

        /// Sets extended attribute `name` (best effort: a filesystem without user attributes keeps none).
        package func setAttribute(_ name: String, _ value: String) {
            guard let set = XAttr.fset else { return }
            _ = Array(value.utf8).withUnsafeBytes { set(fd, name, $0.baseAddress, $0.count, 0) }
        }

        /// fdatasyncs and closes the file.
        package func close() throws(SpoolError) {
            guard !closed else { return }
            closed = true
            defer { Glibc.close(fd) }
            if fdatasync(fd) != 0 { throw SpoolError("fsync", path, errno) }
        }

        /// Closes the file without syncing it: a caller that syncs the whole filesystem later (group commit).
        package func closeWithoutSync() throws(SpoolError) {
            guard !closed else { return }
            closed = true
            if Glibc.close(fd) != 0 { throw SpoolError("close", path, errno) }
        }

        /// Removes it (an abandoned attempt).
        package func discard() {
            if !closed { Glibc.close(fd) }
            closed = true
            unlink(path)
        }

        deinit {
            // An attempt that failed half-way: the descriptor is not leaked; the next attempt truncates the file.
            if !closed { Glibc.close(fd) }
        }
    }

    /// A new temporary file `tmp/<name>` (replacing a leftover of the same name).
    package func temporaryFile(_ name: String) throws(SpoolError) -> TemporaryFile {
        try TemporaryFile(spool: self, name: name)
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
            let target = failed + "/" + file.spoolName + sidecar.suffix
            if rename(tmpPath + "/" + sidecar.temporary.name, target) != 0 { throw SpoolError("rename", target, errno) }
        }
        var touched = try finish(file, to: destination, sidecars: sidecars)
        if !sidecarFiles.isEmpty { touched.insert(failed) }
        return touched
    }
}

/// glibc's extended-attribute calls, which Swift's Glibc module does not export (sys/xattr.h).
enum XAttr {
    static let lget:
        (@convention(c) (UnsafePointer<CChar>, UnsafePointer<CChar>, UnsafeMutableRawPointer?, Int) -> Int)? =
            dlsym(UnsafeMutableRawPointer(bitPattern: 0), "lgetxattr").map {
                unsafeBitCast(
                    $0,
                    to: (@convention(c) (UnsafePointer<CChar>, UnsafePointer<CChar>, UnsafeMutableRawPointer?, Int) ->
                        Int).self
                )
            }
    static let fset: (@convention(c) (Int32, UnsafePointer<CChar>, UnsafeRawPointer?, Int, Int32) -> Int32)? =
        dlsym(UnsafeMutableRawPointer(bitPattern: 0), "fsetxattr").map {
            unsafeBitCast(
                $0,
                to: (@convention(c) (Int32, UnsafePointer<CChar>, UnsafeRawPointer?, Int, Int32) -> Int32).self
            )
        }
}
