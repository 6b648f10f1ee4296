import Foundation
import Spool
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The spool's file layer against names and links that a hostile partner or local user plants
/// (docs/SECURITY.md). In process; HostileNeighbourTests tries the same as real unprivileged users
/// against the real binary.
@Suite struct HostileSpoolTests {
    static let id = "01900000-0000-7000-8000-000000000001"

    func makeSpool(_ dir: TempDir, extra: [Spool.Inbox] = []) throws -> Spool {
        let spool = Spool(root: dir.path + "/spool", kinds: ["appointments"], extraInboxes: extra)
        try spool.prepare()
        return spool
    }

    /// Creates a file whose name is `bytes` in `folder`.
    static func create(_ folder: String, _ bytes: [UInt8], content: String = "x") {
        let path = Array(folder.utf8) + [0x2F] + bytes
        let fd = open(path.map { CChar(bitPattern: $0) } + [0], O_WRONLY | O_CREAT | O_EXCL, 0o644)
        #expect(fd >= 0, "create \(SpoolName.display(bytes))")
        _ = content.withCString { write(fd, $0, strlen($0)) }
        close(fd)
    }

    /// A file outside the spool with its bytes and mtime: what a followed symlink would change.
    struct Canary {
        let path: String
        let mtime: Int

        init(_ dir: TempDir) {
            path = dir.path + "/canary"
            try! Data("precious".utf8).write(to: URL(fileURLWithPath: path))
            var st = stat()
            stat(path, &st)
            mtime = st.st_mtim.tv_sec * 1_000_000_000 + st.st_mtim.tv_nsec
        }

        func isUntouched() -> Bool {
            var st = stat()
            guard stat(path, &st) == 0 else { return false }
            let now = st.st_mtim.tv_sec * 1_000_000_000 + st.st_mtim.tv_nsec
            return now == mtime && (try? String(contentsOfFile: path, encoding: .utf8)) == "precious"
        }
    }

    @Test func everyNameClassIsClaimedExactlyOnceKeepingItsWholeName() throws {
        let dir = TempDir("hostile-names")
        defer { dir.cleanup() }
        let spool = try makeSpool(dir)
        let inbox = spool.inboxes[0]
        let long = String(repeating: "é", count: 120) + "-visits.json"  // 252 bytes
        let names: [[UInt8]] = [
            Array("caf\u{E9}.json".utf8),  // NFC
            Array("cafe\u{301}.json".utf8),  // NFD: the same String, another file
            [UInt8](repeating: 0xFE, count: 90),  // not UTF-8 at all
            Array(long.utf8),
            Array("a\u{1B}]0;owned\u{7}\nb\r.json".utf8),  // control characters, OSC, newline
            Array(String(repeating: "x", count: 250).utf8) + Array(".json".utf8),  // 255 bytes
        ]
        for name in names { Self.create(inbox.path, name) }
        let entries = try spool.scan(inbox.path)
        #expect(entries.count == names.count)
        var claimed: [Spool.Claimed] = []
        for (index, entry) in entries.enumerated() {
            let id = "01900000-0000-7000-8000-00000000000\(index)"
            claimed.append(try #require(try spool.claim(entry, from: inbox, id: id)))
        }
        #expect(try spool.scan(inbox.path).isEmpty, "every entry claimed")
        let recovered = try spool.claimedFiles(kind: "appointments")
        #expect(recovered.count == names.count)
        #expect(Set(recovered.map(\.originalName)) == Set(names.map(SpoolName.display)))
        for file in recovered {
            #expect(file.spoolName.utf8.count + ".rejected.ndjson".utf8.count <= 255, "\(file.spoolName)")
            if file.originalName.hasSuffix(".json") { #expect(file.storedName.hasSuffix(".json")) }
        }
        // The whole long name is kept, though its name on disk was shortened.
        let longFile = try #require(recovered.first { $0.originalName == long })
        #expect(longFile.storedName != long)
        #expect(longFile.storedName.hasSuffix(".json"))
        // Three names were shortened (the long one, the 255-byte one, the 90 bytes that read as 270): each
        // has a note. Finishing removes its note; the file is in failed/ once, beside its sidecar.
        let notes = { try spool.scanAll(spool.processingPath("appointments")).filter { $0.hasSuffix(".name") }.count }
        #expect(try notes() == 3)
        _ = try spool.finish(longFile, to: .failed, sidecars: [(SpoolName.errorSuffix, Array("{}".utf8))])
        #expect(try notes() == 2)
        #expect(try spool.scanAll(spool.failedPath("appointments")).count == 2)
    }

    @Test func aShortenedNameKeepsItsExtension() {
        let name = String(repeating: "a", count: 240) + ".csv"
        let fitted = SpoolName.fit(name, prefixBytes: 38)
        #expect(fitted.hasSuffix(".csv"))
        #expect(38 + fitted.utf8.count + 16 <= 255)
        // Cut at a character boundary, never inside a character.
        let accents = String(repeating: "é", count: 200) + ".ndjson"
        let cut = SpoolName.fit(accents, prefixBytes: 38)
        #expect(cut.hasSuffix(".ndjson") && String(validating: Array(cut.utf8), as: UTF8.self) != nil)
    }

    @Test func symlinksPlantedAtTheDaemonsNamesAreNeverFollowed() throws {
        let dir = TempDir("hostile-links")
        defer { dir.cleanup() }
        let spool = try makeSpool(dir)
        let canary = Canary(dir)
        // Every fixed name the daemon wrote before, and the state files' names now.
        for name in [".retrying.json", ".drop-a.json", ".drop-a.json.w", ".key-1", ".crashed.tmp", ".w", ".http-1"] {
            #expect(symlink(canary.path, spool.tmpPath + "/" + name) == 0)
        }
        for name in [SpoolName.retryState, SpoolName.crashMarker] {
            #expect(symlink(canary.path, spool.stateFolder + "/" + name) == 0)
        }
        let target = spool.failedPath("appointments") + "/" + SpoolName.claimed(id: Self.id, name: "a.json")
        #expect(symlink(canary.path, target + SpoolName.errorSuffix) == 0)
        // The writes of a daemon's life: state, a drop, a claim and its finish with sidecars.
        try spool.writeState(SpoolName.retryState, Array("[]\n".utf8))
        #expect(spool.readState(SpoolName.crashMarker) == nil, "a symlinked state file is not read")
        try spool.drop(bytes: Array("{}".utf8), into: spool.inboxes[0], name: "a.json")
        let claimed = try #require(try spool.claim("a.json", from: spool.inboxes[0], id: Self.id))
        _ = try spool.finish(claimed, to: .failed, sidecars: [(SpoolName.errorSuffix, Array("{}".utf8))])
        let key = try spool.prepareIdempotencyKey(id: Self.id)
        try spool.publishIdempotencyKey(temporaryName: key, kind: "appointments", name: "k")
        #expect(canary.isUntouched())
        // What replaced the links are regular files of the daemon's.
        var st = stat()
        #expect(lstat(spool.stateFolder + "/" + SpoolName.retryState, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG)
        #expect(st.st_mode & 0o777 == 0o600, "state files are the daemon's alone")
        #expect(lstat(target + SpoolName.errorSuffix, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG)
    }

    @Test func aTemporaryFileIsCreatedExclusivelyUnderAFreshName() throws {
        let dir = TempDir("hostile-tmp")
        defer { dir.cleanup() }
        let spool = try makeSpool(dir)
        let a = try spool.temporaryFile("w")
        let b = try spool.temporaryFile("w")
        #expect(a.name != b.name && a.name.hasPrefix(".w-") && a.name.utf8.count == ".w-".utf8.count + 16)
        a.discard()
        b.discard()
        #expect(try spool.scanAll(spool.tmpPath).isEmpty)
    }

    @Test func anInboxSwappedForASymlinkIsNeverFollowed() throws {
        let dir = TempDir("hostile-swap")
        defer { dir.cleanup() }
        let partner = dir.path + "/partner"
        let spool = try makeSpool(dir, extra: [Spool.Inbox(path: partner, kind: "appointments")])
        let inbox = spool.inboxes[1]
        Self.create(partner, Array("first.json".utf8))
        #expect(try spool.scan(inbox.path).map(\.name) == ["first.json"])
        // Someone with write access to the parent swaps the folder for a link to another one.
        let elsewhere = dir.path + "/elsewhere"
        #expect(mkdir(elsewhere, 0o755) == 0)
        Self.create(elsewhere, Array("other.json".utf8))
        #expect(rename(partner, dir.path + "/partner.old") == 0)
        #expect(symlink(elsewhere, partner) == 0)
        #expect(throws: SpoolError.self) { try spool.scan(inbox.path) }
        do {
            _ = try spool.scan(inbox.path)
        } catch {
            #expect(error.isInboxReplaced)
        }
        #expect(throws: SpoolError.self) { try spool.claim("other.json", from: inbox, id: Self.id) }
        #expect(FileManager.default.fileExists(atPath: elsewhere + "/other.json"), "nothing pulled out of it")
        #expect(try spool.claimedFiles(kind: "appointments").isEmpty)
        // Replaced by a plain folder it stays unused too.
        #expect(unlink(partner) == 0 && mkdir(partner, 0o755) == 0)
        #expect(throws: SpoolError.self) { try spool.scan(inbox.path) }
    }

    @Test func aSpoolFolderReplacedByASymlinkIsNotFollowed() throws {
        let dir = TempDir("hostile-folder")
        defer { dir.cleanup() }
        let spool = Spool(root: dir.path + "/spool", kinds: ["appointments"])
        try spool.prepare()
        let elsewhere = dir.path + "/elsewhere"
        #expect(mkdir(elsewhere, 0o755) == 0)
        // tmp/ is a symlink before the daemon first opens it: O_NOFOLLOW refuses it.
        #expect(rmdir(spool.tmpPath) == 0 && symlink(elsewhere, spool.tmpPath) == 0)
        #expect(throws: SpoolError.self) { try spool.writeState(SpoolName.retryState, Array("[]".utf8)) }
        #expect(try FileManager.default.contentsOfDirectory(atPath: elsewhere).isEmpty)
    }

    @Test func namesAreShownWithInvalidBytesEscapedAndNothingElseChanged() {
        #expect(SpoolName.display(Array("café.json".utf8)) == "café.json")
        #expect(SpoolName.display(Array("100%.json".utf8)) == "100%.json")
        #expect(SpoolName.display([0x61, 0xFF, 0x25]) == "a%FF%25")
        #expect(SpoolName.display([0xE2, 0x82]) == "%E2%82")  // a cut sequence
        #expect(SpoolName.display([UInt8](repeating: 0xFE, count: 90)).utf8.count == 270)
    }
}

/// lstat(2) of `path`: whether it is a regular file, its permission bits and its group; nil when absent.
func fileInfo(_ path: String) -> (regular: Bool, mode: UInt32, gid: UInt32)? {
    var st = stat()
    guard lstat(path, &st) == 0 else { return nil }
    return ((st.st_mode & S_IFMT) == S_IFREG, UInt32(st.st_mode & 0o7777), UInt32(st.st_gid))
}
