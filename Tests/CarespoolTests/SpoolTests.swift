import Foundation
import Spool
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@Suite struct SpoolTests {
    func makeSpool(_ dir: TempDir) throws -> Spool {
        let spool = Spool(root: dir.path + "/spool", kinds: ["appointments"])
        try spool.prepare()
        return spool
    }

    @Test func prepareCreatesTheLayout() throws {
        let dir = TempDir("spool")
        defer { dir.cleanup() }
        _ = try makeSpool(dir)
        for folder in [
            "tmp", "inbox/appointments", "processing/appointments", "done/appointments", "failed/appointments",
        ] {
            var isDirectory: ObjCBool = false
            #expect(FileManager.default.fileExists(atPath: dir.path + "/spool/" + folder, isDirectory: &isDirectory))
            #expect(isDirectory.boolValue, "\(folder)")
        }
    }

    @Test(arguments: [
        (".a.json.Xy12Z", true), ("a.json.tmp", true), ("a.part", true), ("a.filepart", true), ("a.json~", true),
        ("a.json", false), ("tmp.json", false), ("partial.csv", false),
    ])
    func skipsWritersIncompleteNames(name: String, skipped: Bool) {
        #expect(Spool.isIncompleteName(name) == skipped)
    }

    /// A name that is not UTF-8 (found by the torture campaign: such a file was never claimed) is claimed by
    /// its exact bytes, left as it is in the inbox until then; its text form escapes the invalid bytes.
    @Test func aNameThatIsNotUTF8IsClaimedByItsBytes() throws {
        let dir = TempDir("spool")
        defer { dir.cleanup() }
        let spool = try makeSpool(dir)
        let inbox = spool.inboxes[0]
        let raw = Array(inbox.path.utf8) + Array("/bad".utf8) + [0xFF, 0xFE] + Array("name%.json".utf8)
        let fd = open(raw.map { CChar(bitPattern: $0) } + [0], O_WRONLY | O_CREAT, 0o644)
        #expect(fd >= 0)
        close(fd)
        let entries = try spool.scan(inbox.path)
        #expect(entries.map(\.name) == ["bad%FF%FEname%25.json"])
        #expect(entries.map(\.bytes) == [Array(raw.dropFirst(inbox.path.utf8.count + 1))])
        let claimed = try #require(try spool.claim(entries[0], from: inbox, id: "01900000-0000-7000-8000-000000000001"))
        #expect(claimed.originalName == "bad%FF%FEname%25.json")
        #expect(try spool.scan(inbox.path).isEmpty)
        #expect(try spool.claimedFiles(kind: "appointments").map(\.originalName) == ["bad%FF%FEname%25.json"])
    }

    /// A writer's incomplete file whose name is not UTF-8 (rsync's `.name.XXXXXX`) is left alone: escaping
    /// it made the writer's own rename fail (found by the torture campaign).
    @Test func anIncompleteNameThatIsNotUTF8IsLeftAlone() throws {
        let dir = TempDir("spool")
        defer { dir.cleanup() }
        let spool = try makeSpool(dir)
        let inbox = spool.inboxes[0]
        for suffix in [".tmp", ".part", "~"] {
            let raw = Array(inbox.path.utf8) + Array("/.bad".utf8) + [0xFF] + Array(("name.json" + suffix).utf8)
            let path = raw.map { CChar(bitPattern: $0) } + [0]
            let fd = open(path, O_WRONLY | O_CREAT, 0o644)
            #expect(fd >= 0)
            close(fd)
            #expect(try spool.scan(inbox.path).isEmpty)
            #expect(try spool.scan(inbox.path).isEmpty)
            #expect(access(path, F_OK) == 0, "the incomplete file must keep its name")
        }
    }

    /// File times are whatever the writer set: the year 5138 (`touch -d @100000000000`) overflowed the
    /// nanosecond arithmetic — a trap at every scan of the inbox. Now saturated.
    @Test func aFileTimeFarInTheFutureOrPastIsSaturatedNotTrappedOn() throws {
        let dir = TempDir("spool")
        defer { dir.cleanup() }
        let spool = try makeSpool(dir)
        let inbox = spool.inboxes[0]
        // ext4 keeps times up to the year 2446 (beyond Int64 nanoseconds too) and clamps the far past to
        // 1901 (which fits): the future saturates, the past is exact.
        for (seconds, expected) in [(100_000_000_000, Int64.max), (-100_000_000_000, Int64(Int32.min) * 1_000_000_000)]
        {
            let path = inbox.path + "/t\(seconds).json"
            try Data("{}".utf8).write(to: URL(fileURLWithPath: path))
            try FileManager.default.setAttributes(
                [.modificationDate: Date(timeIntervalSince1970: TimeInterval(seconds))],
                ofItemAtPath: path
            )
            let entry = try spool.scan(inbox.path).first { $0.name == "t\(seconds).json" }
            #expect(entry?.mtime == expected)
        }
    }

    /// Queue depths count what the pipeline would claim: a fresh clone's `.gitkeep` and a writer's
    /// incomplete files are not waiting work (/health had reported "inbox 3" on an idle daemon).
    @Test func pendingCountSkipsIncompleteNames() throws {
        let dir = TempDir("spool")
        defer { dir.cleanup() }
        let spool = try makeSpool(dir)
        let inbox = spool.inboxPath("appointments")
        for name in [".gitkeep", ".a.json.Xy12Z", "b.json.tmp", "c.part", "d.json", "e.ndjson"] {
            #expect(FileManager.default.createFile(atPath: inbox + "/" + name, contents: Data("{}".utf8)))
        }
        #expect(try spool.pendingCount(inbox) == 2)
        #expect(try spool.pendingCount(dir.path + "/no-such-folder") == 0)
    }

    @Test func theOldestPendingFileIsDatedByItsArrivalNotItsMtime() throws {
        let dir = TempDir("spool")
        defer { dir.cleanup() }
        let partner = dir.path + "/partner"
        try FileManager.default.createDirectory(atPath: partner, withIntermediateDirectories: true)
        let spool = Spool(
            root: dir.path + "/spool",
            kinds: ["appointments"],
            extraInboxes: [Spool.Inbox(path: partner, kind: "appointments")]
        )
        try spool.prepare()
        let inbox = spool.inboxPath("appointments")
        #expect(try spool.oldestInInboxes(of: "appointments") == nil)
        let before = Clock.nowNanos() - 1_000_000_000  // ctime is taken from a coarser clock
        // Kept from the sender (`rsync -t`): an mtime in 2001, but it arrived just now.
        #expect(FileManager.default.createFile(atPath: partner + "/sent.json", contents: Data("{}".utf8)))
        try FileManager.default.setAttributes(
            [.modificationDate: Date(timeIntervalSince1970: 1_000_000_000)],
            ofItemAtPath: partner + "/sent.json"
        )
        #expect(FileManager.default.createFile(atPath: inbox + "/.rsync.tmp", contents: Data("{}".utf8)))
        #expect(FileManager.default.createFile(atPath: inbox + "/d.json", contents: Data("{}".utf8)))
        let arrived = try #require(try spool.oldestInInboxes(of: "appointments"))
        #expect(arrived >= before && arrived <= Clock.nowNanos())
        #expect(try spool.pendingInInboxes(of: "appointments") == 2)
        #expect(try spool.oldestPending(partner) == arrived)
    }

    @Test func claimIsARenameThatOnlyOneClaimerWins() throws {
        let dir = TempDir("spool")
        defer { dir.cleanup() }
        let spool = try makeSpool(dir)
        let inbox = spool.inboxes[0]
        try Data("x".utf8).write(to: URL(fileURLWithPath: inbox.path + "/a.json"))
        try Data("y".utf8).write(to: URL(fileURLWithPath: inbox.path + "/.a.json.partial"))
        #expect(try spool.scan(inbox.path).map(\.name) == ["a.json"])
        let first = try #require(try spool.claim("a.json", from: inbox, id: "id1"))
        #expect(first.path == spool.processingPath("appointments") + "/id1--a.json")
        #expect(try spool.claim("a.json", from: inbox, id: "id2") == nil)
        #expect(try spool.claimedFiles(kind: "appointments").map(\.id) == ["id1"])
    }

    /// A scan's entry names a file by its name and inode: when its sender has since put another file under
    /// that name (the next upload, still being written), the claim takes nothing — that file settles on
    /// its own — and the new file stays in the inbox untouched.
    @Test func anEntryWhoseNameNowHoldsAnotherFileIsNotClaimed() throws {
        let dir = TempDir("spool")
        defer { dir.cleanup() }
        let spool = try makeSpool(dir)
        let inbox = spool.inboxes[0]
        try Data("first".utf8).write(to: URL(fileURLWithPath: inbox.path + "/a.json"))
        let entry = try #require(try spool.scan(inbox.path).first)
        // Taken meanwhile (claimed between two chunks of a large file; here, moved aside), so its inode
        // stays in use and the next file under the name has another.
        #expect(rename(inbox.path + "/a.json", dir.path + "/taken.json") == 0)
        try Data("sec".utf8).write(to: URL(fileURLWithPath: inbox.path + "/.next"))
        #expect(rename(inbox.path + "/.next", inbox.path + "/a.json") == 0)
        #expect(try spool.scan(inbox.path).first?.inode != entry.inode)
        #expect(try spool.claim(entry, from: inbox, id: "id1") == nil)
        #expect(try String(contentsOfFile: inbox.path + "/a.json", encoding: .utf8) == "sec")
        #expect(try spool.claimedFiles(kind: "appointments").isEmpty)
    }

    @Test func neverOpensWhatIsNotARegularFile() throws {
        let dir = TempDir("spool")
        defer { dir.cleanup() }
        let spool = try makeSpool(dir)
        let inbox = spool.inboxes[0]
        #expect(symlink("/etc/passwd", inbox.path + "/link.json") == 0)
        #expect(mkfifo(inbox.path + "/fifo.json", 0o644) == 0)
        #expect(mkdir(inbox.path + "/folder.json", 0o755) == 0)
        let types = Dictionary(uniqueKeysWithValues: try spool.scan(inbox.path).map { ($0.name, $0.type) })
        #expect(types == ["link.json": .symlink, "fifo.json": .fifo, "folder.json": .directory])
        for (index, name) in ["link.json", "fifo.json", "folder.json"].enumerated() {
            let claimed = try #require(try spool.claim(name, from: inbox, id: "id\(index)"))
            guard case .notRegular(let type) = try spool.read(claimed) else {
                Issue.record("\(name) was read")
                continue
            }
            #expect(type == types[name])
            _ = try spool.finish(claimed, to: .failed, sidecars: [(".error.json", Array("{}".utf8))])
        }
        let failed = try spool.scanAll(spool.failedPath("appointments")).sorted()
        #expect(failed.count == 6)
        #expect(try String(contentsOfFile: "/etc/passwd", encoding: .utf8).contains("root"))
    }

    @Test func finishWritesSidecarsAndMovesIntoTheDayFolder() throws {
        let dir = TempDir("spool")
        defer { dir.cleanup() }
        let spool = try makeSpool(dir)
        let inbox = spool.inboxes[0]
        try Data("x".utf8).write(to: URL(fileURLWithPath: inbox.path + "/a.json"))
        let claimed = try #require(try spool.claim("a.json", from: inbox, id: "id1"))
        #expect(try spool.read(claimed).bytes == Array("x".utf8))
        let touched = try spool.finish(
            claimed,
            to: .done(day: "2026-11-23"),
            sidecars: [(".error.json", Array("{}".utf8)), (".rejected.ndjson", Array("{}\n".utf8))]
        )
        try spool.syncDirectories(touched)
        #expect(FileManager.default.fileExists(atPath: spool.donePath("appointments") + "/2026-11-23/id1--a.json"))
        #expect(
            try spool.scanAll(spool.failedPath("appointments")).sorted() == [
                "id1--a.json.error.json", "id1--a.json.rejected.ndjson",
            ]
        )
        #expect(try spool.scanAll(spool.tmpPath).isEmpty)
        #expect(try spool.claimedFiles(kind: "appointments").isEmpty)
    }

    @Test func requeueNeverReplacesAFileInTheInbox() throws {
        let dir = TempDir("spool")
        defer { dir.cleanup() }
        let spool = try makeSpool(dir)
        let inbox = spool.inboxes[0]
        try Data("old".utf8).write(to: URL(fileURLWithPath: inbox.path + "/a.json"))
        let claimed = try #require(try spool.claim("a.json", from: inbox, id: "id1"))
        _ = try spool.finish(claimed, to: .failed, sidecars: [(".error.json", Array("{}".utf8))])
        try Data("new".utf8).write(to: URL(fileURLWithPath: inbox.path + "/a.json"))
        #expect(throws: SpoolError.self) { try spool.requeue(id: "id1") }
        #expect(try String(contentsOfFile: inbox.path + "/a.json", encoding: .utf8) == "new")
        unlink(inbox.path + "/a.json")
        let moved = try spool.requeue(id: "id1")
        #expect(moved?.name == "a.json")
        #expect(try String(contentsOfFile: inbox.path + "/a.json", encoding: .utf8) == "old")
        #expect(try spool.scanAll(spool.failedPath("appointments")).isEmpty)
    }

    @Test func dropIsDurableAndNeverReplaces() throws {
        let dir = TempDir("spool")
        defer { dir.cleanup() }
        let spool = try makeSpool(dir)
        try spool.drop(bytes: Array("1".utf8), into: spool.inboxes[0], name: "w.json")
        #expect(throws: SpoolError.self) {
            try spool.drop(bytes: Array("2".utf8), into: spool.inboxes[0], name: "w.json")
        }
        #expect(try String(contentsOfFile: spool.inboxes[0].path + "/w.json", encoding: .utf8) == "1")
    }

    @Test func idsAreUniqueAndSortByTime() {
        let ids = IDGenerator()
        let made = (0..<10_000).map { _ in ids.next() }
        #expect(Set(made).count == made.count)
        #expect(made == made.sorted())
        #expect(made[0].count == 36)
        #expect(Array(made[0])[14] == "7")
    }
}

extension Spool.Content {
    var bytes: [UInt8]? {
        if case .regular(let bytes) = self { return bytes }
        return nil
    }
}
