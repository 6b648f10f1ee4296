/// Text from outside — a partner's file name, a record's value, an error quoting either — made safe for an
/// operator's terminal in the CLI's human output: every control character (C0, DEL, C1), and the Unicode
/// format characters that reorder or hide text (bidirectional overrides and isolates, zero-width marks),
/// is written visibly as `\u{XX}`, and a backslash as `\\`, so that no escape sequence, carriage return or
/// newline from a name reaches the terminal (a name could otherwise recolour the screen, set the window
/// title, or draw a fake table row). Invalid UTF-8 never reaches here: names are read as
/// ``SpoolName/display(_:)`` forms (`%XX`). `--json` output is not escaped: JSON quotes exactly.
enum Terminal {
    static func safe(_ text: String) -> String {
        var out = ""
        out.unicodeScalars.reserveCapacity(text.unicodeScalars.count)
        for scalar in text.unicodeScalars {
            if scalar == "\\" {
                out += "\\\\"
            } else if isUnsafe(scalar) {
                out += "\\u{" + String(scalar.value, radix: 16, uppercase: true) + "}"
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    static func isUnsafe(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.value {
        case 0x00...0x1F, 0x7F...0x9F: true
        case 0x200B...0x200F, 0x2028...0x202E, 0x2060...0x2069, 0xFEFF: true
        default: false
        }
    }
}
