import Crypto

/// Standard Webhooks signatures (standardwebhooks.com): `webhook-signature` holds one or more
/// space-separated `v1,<base64 HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{raw body}")>`, several
/// during a key rotation. The key is a secret `whsec_<base64 key bytes>` (a secret without the prefix is
/// taken as base64 all the same, and one that is not base64 as its UTF-8 bytes).
package enum StandardWebhooks {
    /// The HMAC key of a configured secret.
    package static func key(secret: String) -> [UInt8] {
        let text = secret.hasPrefix("whsec_") ? String(secret.dropFirst(6)) : secret
        return Base64.decode(text) ?? Array(text.utf8)
    }

    /// Whether any `v1,` signature in `header` signs `id`, `timestamp` and `body` under any of `keys`.
    /// Every candidate is compared in constant time.
    package static func isValid(header: String, id: String, timestamp: String, body: [UInt8], keys: [[UInt8]]) -> Bool {
        let message = Array("\(id).\(timestamp).".utf8) + body
        let expected = keys.map { key in
            Array(HMAC<SHA256>.authenticationCode(for: message, using: SymmetricKey(data: key)))
        }
        var valid = false
        for candidate in header.split(separator: " ") where candidate.hasPrefix("v1,") {
            guard let presented = Base64.decode(String(candidate.dropFirst(3))) else { continue }
            for mac in expected where ZoomSignature.constantTimeEqual(mac, presented) { valid = true }
        }
        return valid
    }

    /// The header value a sender would send: `v1,<base64>` (for tests and tools).
    package static func signature(id: String, timestamp: String, body: [UInt8], key: [UInt8]) -> String {
        let message = Array("\(id).\(timestamp).".utf8) + body
        return "v1,"
            + Base64.encode(Array(HMAC<SHA256>.authenticationCode(for: message, using: SymmetricKey(data: key))))
    }
}

/// Standard base64 (RFC 4648 §4, with padding).
package enum Base64 {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    package static func encode(_ bytes: [UInt8]) -> String {
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count + 2) / 3 * 4)
        var i = 0
        while i < bytes.count {
            let b0 = bytes[i]
            let b1 = i + 1 < bytes.count ? bytes[i + 1] : 0
            let b2 = i + 2 < bytes.count ? bytes[i + 2] : 0
            out.append(alphabet[Int(b0 >> 2)])
            out.append(alphabet[Int((b0 & 0x03) << 4 | b1 >> 4)])
            out.append(i + 1 < bytes.count ? alphabet[Int((b1 & 0x0F) << 2 | b2 >> 6)] : UInt8(ascii: "="))
            out.append(i + 2 < bytes.count ? alphabet[Int(b2 & 0x3F)] : UInt8(ascii: "="))
            i += 3
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// The bytes of `text`, or nil when it is not padded standard base64.
    package static func decode(_ text: String) -> [UInt8]? {
        let input = Array(text.utf8)
        guard !input.isEmpty, input.count % 4 == 0 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(input.count / 4 * 3)
        var i = 0
        while i < input.count {
            var values: [UInt8] = []
            var padding = 0
            for j in 0..<4 {
                let c = input[i + j]
                if c == UInt8(ascii: "=") {
                    // Padding only at the end, at most two.
                    guard i + 4 == input.count, j >= 2 else { return nil }
                    padding += 1
                    values.append(0)
                } else {
                    guard padding == 0, let value = alphabet.firstIndex(of: c) else { return nil }
                    values.append(UInt8(value))
                }
            }
            out.append(values[0] << 2 | values[1] >> 4)
            if padding < 2 { out.append(values[1] << 4 | values[2] >> 2) }
            if padding < 1 { out.append(values[2] << 6 | values[3]) }
            i += 4
        }
        return out
    }
}
