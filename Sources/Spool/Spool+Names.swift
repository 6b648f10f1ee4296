/// The spool's names: the one place that formats and parses `<id>--<name>`, the sidecar suffixes, and the
/// daemon's own files' names (Postfix's `mail_queue.h`). No other code spells a `"--"` or a suffix.
package enum SpoolName {
    /// Between a file's id and its original name.
    package static let separator = "--"
    /// The error report beside a rejected or partial file.
    package static let errorSuffix = ".error.json"
    /// The rejected records beside a partial file: `.rejected.<ext>`.
    package static func rejectedSuffix(_ ext: String) -> String { ".rejected." + ext }
    /// The longest sidecar suffix: every `<id>--<name>` leaves room for it within NAME_MAX.
    static let longestSuffix = ".rejected.ndjson".utf8.count
    /// NAME_MAX on Linux filesystems.
    static let nameMax = 255

    /// `<id>--<name>`.
    package static func claimed(id: String, name: String) -> String { id + separator + name }

    /// The id and name of `<id>--<name>`; nil for any other name.
    package static func parse(_ spoolName: String) -> (id: String, name: String)? {
        guard let split = spoolName.firstRange(of: separator), split.lowerBound != spoolName.startIndex else {
            return nil
        }
        return (String(spoolName[..<split.lowerBound]), String(spoolName[split.upperBound...]))
    }

    /// The files themselves among `names` (a listing of failed/<kind>/), without their sidecars. A sidecar
    /// is another entry's name plus `.error.json` or `.rejected.<ext>`: judged against the listing, never
    /// by the name alone, so that a partner's `bad.error.json` is a file like any other.
    package static func files(among names: [String]) -> [String] {
        let present = Set(names)
        return names.filter { name in
            guard parse(name) != nil else { return false }
            if name.hasSuffix(errorSuffix), present.contains(String(name.dropLast(errorSuffix.utf8.count))) {
                return false
            }
            // `<file>.rejected.<ext>`: the last ".rejected." in the name, an extension without a dot after it.
            if let range = name.ranges(of: ".rejected.").last, present.contains(String(name[..<range.lowerBound])),
                !name[range.upperBound...].contains(".")
            {
                return false
            }
            return true
        }
    }

    /// Whether `name` is the failed file itself of id `id` among `names` (not one of its sidecars).
    package static func isFile(_ name: String, of id: String, among names: [String]) -> Bool {
        name.hasPrefix(id + separator) && files(among: names).contains(name)
    }

    /// A name as text: itself when its bytes are UTF-8; otherwise every byte of an invalid sequence (and
    /// every `%`, so that the form reads back unambiguously) written `%XX`. Never longer than 3× the bytes.
    package static func display(_ bytes: [UInt8]) -> String {
        if let text = String(validating: bytes, as: UTF8.self) { return text }
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count * 3)
        var index = 0
        while index < bytes.count {
            let length = validSequenceLength(bytes, at: index)
            if length > 0 && bytes[index] != UInt8(ascii: "%") {
                out += bytes[index..<(index + length)]
                index += length
            } else {
                let byte = bytes[index]
                let digits = Array("0123456789ABCDEF".utf8)
                out += [UInt8(ascii: "%"), digits[Int(byte >> 4)], digits[Int(byte & 15)]]
                index += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// The length of the well-formed UTF-8 sequence at `index`, or 0.
    private static func validSequenceLength(_ bytes: [UInt8], at index: Int) -> Int {
        let first = bytes[index]
        let length: Int
        switch first {
        case 0x00...0x7F: return 1
        case 0xC2...0xDF: length = 2
        case 0xE0...0xEF: length = 3
        case 0xF0...0xF4: length = 4
        default: return 0
        }
        guard index + length <= bytes.count else { return 0 }
        return String(validating: bytes[index..<(index + length)], as: UTF8.self) == nil ? 0 : length
    }

    /// `name` shortened, if it must be, so that `<id>--<name>` plus the longest sidecar suffix fits in
    /// NAME_MAX: the stem is cut at a character boundary and the extension (up to 16 bytes) kept.
    package static func fit(_ name: String, prefixBytes: Int) -> String {
        let limit = nameMax - prefixBytes - longestSuffix
        guard name.utf8.count > limit else { return name }
        var stem = Substring(name)
        var ext = Substring("")
        if let dot = name.lastIndex(of: "."), dot != name.startIndex,
            name.utf8.distance(from: dot, to: name.endIndex) <= 16
        {
            stem = name[..<dot]
            ext = name[dot...]
        }
        let room = limit - ext.utf8.count
        var cut = ""
        for character in stem {
            if cut.utf8.count + character.utf8.count > room { break }
            cut.append(character)
        }
        if cut.isEmpty {
            // A single character longer than the room (combining marks on one base): cut by scalar.
            for scalar in stem.unicodeScalars {
                if cut.utf8.count + String(scalar).utf8.count > room { break }
                cut.unicodeScalars.append(scalar)
            }
        }
        return cut + ext
    }

    /// The note that keeps a shortened name whole: `processing/<kind>/.<id>.name`.
    static func nameNote(id: String) -> String { "." + id + ".name" }

    /// The note that keeps its inbox's ``Spool/Inbox/note`` beside a claimed file: `processing/<kind>/.<id>.inbox`.
    static func inboxNote(id: String) -> String { "." + id + ".inbox" }

    /// The crash guard's marker in `processing/`: a dotfile, so no scan takes it for a claimed file.
    package static let crashMarker = ".crashed"
    /// The retry state that `carespool status` reads, in `processing/`.
    package static let retryState = "retrying.json"
    /// Inbox entries that cannot be claimed, in `processing/`: `<inbox index> <inode> <error>` a line.
    package static let unclaimableState = "unclaimable"
    /// Files written in place in rename-only inboxes, left for their writers, in `processing/`:
    /// `<inode> <size> <mtime ns> <ctime ns> <inbox path>` a line (no file names), so a restart knows them.
    package static let inPlaceState = "written-in-place"
}
