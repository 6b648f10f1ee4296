import CZlib

/// How far a compressed file may expand: a decompression bomb (a few KB of gzip that inflate to
/// gigabytes) is refused by either limit, as soon as it crosses it — never decompressed to its end.
package struct DecompressionLimits: Sendable, Equatable {
    /// The most bytes one file may decompress to (`compression.max_decompressed_mib`).
    package var maxBytes: Int64
    /// The most decompressed bytes per compressed byte read so far (`compression.max_ratio`), checked once
    /// more than ``ratioFloor`` bytes came out: a small file of one repeated value may compress far better.
    package var maxRatio: Int
    package static let ratioFloor: Int64 = 8 << 20

    package static let defaultMaxMib = 16_384
    package static let defaultMaxRatio = 200

    package init(maxBytes: Int64 = Int64(defaultMaxMib) << 20, maxRatio: Int = defaultMaxRatio) {
        self.maxBytes = maxBytes
        self.maxRatio = maxRatio
    }

    /// Both limits, as the configuration names them: every refusal names both.
    var named: String {
        "compression.max_decompressed_mib = \(maxBytes >> 20), compression.max_ratio = \(maxRatio)"
    }
}

/// What a compressed file's first bytes say it is.
package enum Compression: Sendable, Equatable {
    case gzip
    /// Compressed in a format carespool does not read (its name, and its magic bytes): a verdict.
    case unsupported(String)

    /// Recognised by magic bytes, never by the name's suffix (RFC 1952 gzip; zstd, xz, bzip2, zip, lz4
    /// named so that their verdict says what they are).
    package static func of(_ head: some Collection<UInt8>) -> Compression? {
        let bytes = Array(head.prefix(6))
        func starts(_ magic: [UInt8]) -> Bool { bytes.starts(with: magic) }
        if starts([0x1F, 0x8B]) { return .gzip }
        if starts([0x28, 0xB5, 0x2F, 0xFD]) { return .unsupported("zstd (magic bytes 28 B5 2F FD)") }
        if starts([0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00]) { return .unsupported("xz (magic bytes FD 37 7A 58 5A 00)") }
        if starts([0x42, 0x5A, 0x68]), bytes.count > 3, (0x31...0x39).contains(bytes[3]) {
            return .unsupported("bzip2 (magic bytes 42 5A 68)")
        }
        if starts([0x50, 0x4B, 0x03, 0x04]) { return .unsupported("zip (magic bytes 50 4B 03 04)") }
        if starts([0x04, 0x22, 0x4D, 0x18]) { return .unsupported("lz4 (magic bytes 04 22 4D 18)") }
        return nil
    }

    /// The verdict on a file compressed in a format carespool does not read.
    package static func unsupportedMessage(_ format: String) -> String {
        "compressed as \(format), which carespool does not read: send it gzip-compressed (.gz) or uncompressed"
    }
}

/// A gzip stream that is corrupt, truncated, or a decompression bomb: a verdict on the file, naming the
/// compressed byte where it was found.
package struct DecompressionProblem: Error, Sendable, Equatable {
    package var offset: Int64
    package var message: String
}

/// Streams gzip data (RFC 1952; several members one after another, as `cat a.gz b.gz` makes, are one
/// stream) through the system's zlib, 256 KiB of output at a time: memory stays bounded whatever the sizes.
package final class GzipStream {
    private let inflater: OpaquePointer
    private var output = [UInt8](repeating: 0, count: 256 << 10)
    private let limits: DecompressionLimits
    /// Compressed bytes read and decompressed bytes made so far.
    package private(set) var consumed: Int64 = 0
    package private(set) var produced: Int64 = 0
    /// Inside a member: more bytes are owed before the stream may end.
    private var open = false
    /// A member has ended (and no other begun since).
    private var afterMember = false
    /// Only zero bytes since the last member (padding to a block size, which gzip(1) ignores too).
    private var padding = false

    package init(limits: DecompressionLimits) {
        guard let inflater = carespool_inflater_new() else { fatalError("zlib: out of memory") }
        self.inflater = inflater
        self.limits = limits
    }

    deinit { carespool_inflater_free(inflater) }

    /// Decompresses `input`, calling `body` with each piece of output.
    package func feed(_ input: ArraySlice<UInt8>, _ body: (ArraySlice<UInt8>) throws -> Void) throws {
        try input.withUnsafeBufferPointer { source in
            guard let base = source.baseAddress else { return }
            var offset = 0
            while true {
                if padding || (afterMember && base[offset] == 0) {
                    padding = true
                    while offset < source.count && base[offset] == 0 {
                        offset += 1
                        consumed += 1
                    }
                    if offset == source.count { return }
                    throw DecompressionProblem(
                        offset: consumed,
                        message: "the gzip stream is corrupt at compressed byte \(consumed): data after the zero "
                            + "padding that follows its last member"
                    )
                }
                var used = 0
                var made = 0
                var message: UnsafePointer<CChar>?
                let status = output.withUnsafeMutableBufferPointer { out in
                    carespool_inflate(
                        inflater,
                        base + offset,
                        source.count - offset,
                        &used,
                        out.baseAddress!,
                        out.count,
                        &made,
                        &message
                    )
                }
                offset += used
                consumed += Int64(used)
                produced += Int64(made)
                if status == CARESPOOL_INFLATE_CORRUPT {
                    let reason = message.map { String(cString: $0) } ?? "corrupt data"
                    throw DecompressionProblem(
                        offset: consumed,
                        message: consumed <= 10 && produced == 0 && !open
                            ? "not a gzip stream at byte \(consumed) (\(reason)), although it begins like one"
                            : "the gzip stream is corrupt at compressed byte \(consumed): \(reason)"
                    )
                }
                if status == CARESPOOL_INFLATE_MEMBER_END {
                    open = false
                    afterMember = true
                } else if used > 0 {
                    open = true
                    afterMember = false
                }
                try checkLimits()
                if made > 0 { try body(output[0..<made]) }
                if status == CARESPOOL_INFLATE_MEMBER_END {
                    if offset == source.count { return }
                    continue
                }
                // Nothing moved: zlib wants more input. All input taken and room left: the same.
                if (used == 0 && made == 0) || (offset == source.count && made < output.count) { return }
            }
        }
    }

    /// The input ended: a member still open is a truncated file.
    package func finish() throws(DecompressionProblem) {
        if open || consumed == 0 {
            throw DecompressionProblem(
                offset: consumed,
                message:
                    "the gzip stream is truncated: the file ends at compressed byte \(consumed), inside compressed "
                    + "data (\(produced) bytes decompressed so far); send the whole file again"
            )
        }
    }

    private func checkLimits() throws(DecompressionProblem) {
        if produced > limits.maxBytes {
            throw DecompressionProblem(
                offset: consumed,
                message:
                    "refused: it decompresses to more than \(limits.maxBytes) bytes (a decompression bomb, or a "
                    + "file larger than allowed; \(consumed) compressed bytes read); the limits are \(limits.named)"
            )
        }
        if produced > DecompressionLimits.ratioFloor && produced > Int64(limits.maxRatio) * max(consumed, 1) {
            throw DecompressionProblem(
                offset: consumed,
                message:
                    "refused as a decompression bomb: \(consumed) compressed bytes decompressed to \(produced) "
                    + "bytes, more than \(limits.maxRatio) times as many; the limits are \(limits.named)"
            )
        }
    }

    /// Decompresses `bytes` whole, refusing more than `limit` bytes of output (nil when it has more).
    package static func decompress(_ bytes: [UInt8], limits: DecompressionLimits, upTo limit: Int)
        throws(DecompressionProblem) -> [UInt8]?
    {
        let stream = GzipStream(limits: limits)
        var whole: [UInt8] = []
        do {
            try stream.feed(bytes[...]) { piece in
                whole += piece
                if whole.count > limit { throw TooLong() }
            }
        } catch let problem as DecompressionProblem {
            throw problem
        } catch {
            return nil
        }
        try stream.finish()
        return whole
    }

    private struct TooLong: Error {}
}
