import Pipeline
import Spool
import Testing

/// The settle / open-hold state machine on its own: no file system, entries and clocks made up.
@Suite struct SettleTrackerTests {
    static let second: Int64 = 1_000_000_000
    static let folder = "/spool/inbox/intake"

    static func entry(
        _ bytes: [UInt8],
        size: Int64 = 10,
        mtime: Int64 = 0,
        inode: UInt64 = 1,
        ctime: Int64 = 0
    ) -> Spool.Entry {
        Spool.Entry(
            name: SpoolName.display(bytes),
            bytes: bytes,
            type: .regular,
            size: size,
            mtime: mtime,
            inode: inode,
            ctime: ctime
        )
    }

    func scan(
        _ tracker: inout SettleTracker,
        _ entries: [Spool.Entry],
        at now: Int64,
        wallNow: Int64 = 0,
        arrival: Spool.Arrival = .close
    ) -> [[UInt8]] {
        tracker.scan(
            folder: Self.folder,
            arrival: arrival,
            entries: entries,
            now: now,
            wallNow: wallNow,
            fullEntry: { $0 }
        ).ready.map(\.bytes)
    }

    /// "é" as one scalar (NFC) and as "e" + combining acute (NFD): equal as Swift Strings, two files on disk.
    @Test func canonicallyEquivalentNamesAreTwoEntriesAndBothBecomeReady() {
        let nfc = Array("caf\u{E9}.csv".utf8)
        let nfd = Array("cafe\u{301}.csv".utf8)
        #expect("caf\u{E9}.csv" == "cafe\u{301}.csv")  // why a String key is wrong
        var tracker = SettleTracker(settle: 2 * Self.second, openHold: 600 * Self.second)
        let entries = [Self.entry(nfc, inode: 1), Self.entry(nfd, inode: 2)]
        #expect(scan(&tracker, entries, at: 0).isEmpty)
        #expect(Set(scan(&tracker, entries, at: 3 * Self.second)) == [nfc, nfd])
    }

    @Test func renamedInIsReadyAtOnceUnlessHeldOpen() {
        var tracker = SettleTracker(settle: 2 * Self.second, openHold: 600 * Self.second)
        let nfc = Array("caf\u{E9}.csv".utf8)
        let nfd = Array("cafe\u{301}.csv".utf8)
        let keyNFC = SettleTracker.key(folder: Self.folder, name: nfc)
        let keyNFD = SettleTracker.key(folder: Self.folder, name: nfd)
        // One closed, its canonically equivalent twin still open: only the closed one is ready.
        tracker.absorb(renamed: [keyNFC], opened: [keyNFD: 1], overflow: false)
        let ready = scan(&tracker, [Self.entry(nfc, inode: 1), Self.entry(nfd, inode: 2)], at: 0)
        #expect(ready == [nfc])
    }

    @Test func aFileSettlesOnlyOnceItsSizeMtimeAndInodeHoldStill() {
        var tracker = SettleTracker(settle: 2 * Self.second, openHold: 600 * Self.second)
        let name = Array("a.json".utf8)
        #expect(scan(&tracker, [Self.entry(name, size: 1)], at: 0).isEmpty)
        #expect(scan(&tracker, [Self.entry(name, size: 2)], at: 1 * Self.second).isEmpty)  // grew
        #expect(scan(&tracker, [Self.entry(name, size: 2)], at: 2 * Self.second).isEmpty)  // 1 s still
        #expect(scan(&tracker, [Self.entry(name, size: 2, inode: 9)], at: 3 * Self.second).isEmpty)  // replaced
        #expect(scan(&tracker, [Self.entry(name, size: 2, inode: 9)], at: 5 * Self.second) == [name])
    }

    @Test func aFileHeldOpenWaitsForItsCloseButNotForEver() {
        var tracker = SettleTracker(settle: 2 * Self.second, openHold: 10 * Self.second)
        let name = Array("upload.csv".utf8)
        let key = SettleTracker.key(folder: Self.folder, name: name)
        tracker.absorb(opened: [key: 1], overflow: false)
        var events: [SettleTracker.Event] = []
        for second in [0, 3, 6, 9] as [Int64] {
            let result = tracker.scan(
                folder: Self.folder,
                entries: [Self.entry(name)],
                now: second * Self.second,
                wallNow: 0,
                fullEntry: { $0 }
            )
            #expect(result.ready.isEmpty, "claimed at \(second) s while open")
            events += result.events
        }
        #expect(events == [.heldOpen(key)], "said once")
        let late = tracker.scan(
            folder: Self.folder,
            entries: [Self.entry(name)],
            now: 10 * Self.second,
            wallNow: 0,
            fullEntry: { $0 }
        )
        #expect(late.ready.map(\.bytes) == [name])
        #expect(late.events == [.claimedWhileOpen(key, held: 10 * Self.second)])
    }

    @Test func anOverflowForgetsOpenCountsAndVanishedEntriesAreForgotten() {
        var tracker = SettleTracker(settle: 2 * Self.second, openHold: 600 * Self.second)
        let name = Array("a.json".utf8)
        let key = SettleTracker.key(folder: Self.folder, name: name)
        tracker.absorb(renamed: [key], opened: [key: 1], overflow: false)
        #expect(scan(&tracker, [Self.entry(name)], at: 0).isEmpty)
        tracker.absorb(opened: [:], overflow: true)
        #expect(scan(&tracker, [Self.entry(name)], at: 0) == [name])
        // Gone from the folder: nothing of it is kept.
        _ = scan(&tracker, [], at: 1)
        #expect(tracker.foldersToRevisit.isEmpty)
    }

    @Test func anEntryOfAFolderBelowIsNotForgottenByTheFolderAbove() {
        var tracker = SettleTracker(settle: 2 * Self.second, openHold: 600 * Self.second)
        let below = Self.folder + "/partner"
        let name = Array("a.json".utf8)
        _ = tracker.scan(folder: below, entries: [Self.entry(name)], now: 0, wallNow: 0, fullEntry: { $0 })
        _ = scan(&tracker, [], at: 1)  // the folder above, empty
        let ready = tracker.scan(
            folder: below,
            entries: [Self.entry(name)],
            now: 3 * Self.second,
            wallNow: 0,
            fullEntry: { $0 }
        )
        #expect(ready.ready.map(\.bytes) == [name])
    }

    @Test func notRegularEntriesAreReadyAtOnce() {
        var tracker = SettleTracker(settle: 2 * Self.second, openHold: 600 * Self.second)
        var directory = Self.entry(Array("folder".utf8))
        directory.type = .directory
        #expect(scan(&tracker, [directory], at: 0) == [Array("folder".utf8)])
    }

    // MARK: Written in place: the close grace (issue 21, point 1)

    /// `rsync -a --inplace` closes the file, then sets its times and mode by name: claimed before that,
    /// rsync ends with status 23. A file written in place waits for the grace, by our clock, and every
    /// change (here rsync's utimes, which puts the mtime years back) starts the grace again.
    @Test func aFileWrittenInPlaceWaitsForTheCloseGraceAndEachChangeRestartsIt() {
        var tracker = SettleTracker(settle: 2 * Self.second, openHold: 600 * Self.second, closeGrace: Self.second)
        let name = Array("visits.csv".utf8)
        let key = SettleTracker.key(folder: Self.folder, name: name)
        let wall: Int64 = 1_000_000 * Self.second
        tracker.absorb(closed: [key], created: [key], opened: [key: 0], overflow: false)
        let written = Self.entry(name, mtime: wall, ctime: wall)
        #expect(scan(&tracker, [written], at: 0, wallNow: wall).isEmpty)
        #expect(scan(&tracker, [written], at: Self.second / 2, wallNow: wall).isEmpty)
        // rsync sets the sender's mtime (long ago) and the mode: the mtime's age is no reason to claim.
        let timed = Self.entry(name, mtime: 5, ctime: wall + Self.second / 2)
        #expect(scan(&tracker, [timed], at: Self.second * 6 / 10, wallNow: wall).isEmpty)
        #expect(scan(&tracker, [timed], at: Self.second * 15 / 10, wallNow: wall).isEmpty)
        #expect(scan(&tracker, [timed], at: Self.second * 16 / 10, wallNow: wall) == [name])
    }

    @Test func withNoGraceAFileWrittenInPlaceIsReadyOnceClosed() {
        var tracker = SettleTracker(settle: 2 * Self.second, openHold: 600 * Self.second, closeGrace: 0)
        let name = Array("a.json".utf8)
        let key = SettleTracker.key(folder: Self.folder, name: name)
        tracker.absorb(closed: [key], opened: [key: 1], overflow: false)
        #expect(scan(&tracker, [Self.entry(name)], at: 0).isEmpty, "still open")
        tracker.absorb(opened: [key: -1], overflow: false)
        #expect(scan(&tracker, [Self.entry(name)], at: 1) == [name])
    }

    // MARK: arrival = "rename" (issue 21, point 2)

    @Test func aRenameOnlyInboxNeverTakesAFileWrittenInPlaceAndSaysSoOnce() {
        var tracker = SettleTracker(settle: 2 * Self.second, openHold: 10 * Self.second, closeGrace: Self.second)
        let name = Array("upload.csv".utf8)
        let key = SettleTracker.key(folder: Self.folder, name: name)
        // An SFTP upload killed mid-put: sshd closed the half file under its final name.
        tracker.absorb(closed: [key], created: [key], opened: [key: 0], overflow: false)
        var events: [SettleTracker.Event] = []
        for second in [0, 5, 60, 3_600] as [Int64] {
            let result = tracker.scan(
                folder: Self.folder,
                arrival: .rename,
                entries: [Self.entry(name)],
                now: second * Self.second,
                wallNow: second * Self.second,
                fullEntry: { $0 }
            )
            #expect(result.ready.isEmpty, "claimed at \(second) s")
            events += result.events
        }
        #expect(events == [.writtenInPlace(key)])
        #expect(tracker.foldersToRevisit.isEmpty, "not looked at every wake-up")
        // The same inbox takes the re-send the moment it is renamed in.
        let final = Array("upload.final.csv".utf8)
        tracker.absorb(renamed: [SettleTracker.key(folder: Self.folder, name: final)], opened: [:], overflow: false)
        let both = [Self.entry(name), Self.entry(final, inode: 2)]
        #expect(scan(&tracker, both, at: 3_601 * Self.second, arrival: .rename) == [final])
    }

    /// OpenSSH's sftp-server renames with link() and unlink(): a create, no open, no write-close.
    @Test func aRenameOnlyInboxTakesALinkAfterTheGraceButNotACreateStillOpen() {
        var tracker = SettleTracker(settle: 2 * Self.second, openHold: 10 * Self.second, closeGrace: Self.second)
        let linked = Array("linked.csv".utf8)
        let writing = Array("writing.csv".utf8)
        let linkedKey = SettleTracker.key(folder: Self.folder, name: linked)
        let writingKey = SettleTracker.key(folder: Self.folder, name: writing)
        tracker.absorb(created: [linkedKey, writingKey], opened: [writingKey: 1], overflow: false)
        let entries = [Self.entry(linked, inode: 1), Self.entry(writing, inode: 2)]
        #expect(scan(&tracker, entries, at: 0, arrival: .rename).isEmpty)
        #expect(scan(&tracker, entries, at: Self.second, arrival: .rename) == [linked])
        // A writer that holds its file open under its final name is never overtaken, however long.
        #expect(scan(&tracker, [entries[1]], at: 3_600 * Self.second, arrival: .rename).isEmpty)
        // After an overflow a create may have lost its write-close: no longer taken for a link.
        tracker.absorb(opened: [:], overflow: true)
        #expect(scan(&tracker, [entries[1]], at: 3_601 * Self.second, arrival: .rename).isEmpty)
        #expect(scan(&tracker, [entries[1]], at: 3_700 * Self.second, arrival: .rename).isEmpty)
    }

    /// Found by a rescan with no event (after a restart): a file changed after its last write (renamed,
    /// linked, given times) settles as anywhere; one unchanged since written may be a killed upload.
    @Test func aRenameOnlyInboxTakesAFileOfUnknownArrivalOnlyWhenItChangedAfterItsLastWrite() {
        var tracker = SettleTracker(settle: 2 * Self.second, openHold: 10 * Self.second, closeGrace: Self.second)
        let renamed = Array("renamed-while-down.csv".utf8)
        let written = Array("killed-while-down.csv".utf8)
        let entries = [
            Self.entry(renamed, mtime: 100, inode: 1, ctime: 200),
            Self.entry(written, mtime: 100, inode: 2, ctime: 100),
        ]
        let wall = 100 * Self.second
        let first = tracker.scan(
            folder: Self.folder,
            arrival: .rename,
            entries: entries,
            now: 0,
            wallNow: wall,
            fullEntry: { $0 }
        )
        #expect(first.ready.isEmpty, "seen once")
        #expect(first.events == [.arrivalUnknown(SettleTracker.key(folder: Self.folder, name: written))])
        #expect(scan(&tracker, entries, at: 1, wallNow: wall, arrival: .rename) == [renamed], "settled by its mtime")
        #expect(scan(&tracker, [entries[1]], at: 3_600 * Self.second, wallNow: wall, arrival: .rename).isEmpty)
        // The same files in an ordinary inbox settle alike.
        var ordinary = SettleTracker(settle: 2 * Self.second, openHold: 10 * Self.second, closeGrace: Self.second)
        #expect(scan(&ordinary, entries, at: 0, wallNow: wall).isEmpty)
        #expect(Set(scan(&ordinary, entries, at: 1, wallNow: wall)) == [renamed, written])
    }
}
