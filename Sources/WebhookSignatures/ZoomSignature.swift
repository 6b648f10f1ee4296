// WebhookSignatures: verifying that a webhook body comes from its sender, over the raw bytes as received.
//
// Trusts nothing: signatures, timestamps and bodies are attacker-controlled. Compares in constant time.
// Never parses or re-serialises a body (that would change the bytes the sender signed), never logs.

import Crypto

/// Zoom's webhook signatures: `x-zm-signature: v0=<hex HMAC-SHA256(secret, "v0:{timestamp}:{raw body}")>`.
package enum ZoomSignature {
    /// Whether `signature` (the `x-zm-signature` header) is Zoom's signature of `body` at `timestamp`
    /// (the `x-zm-request-timestamp` header, epoch seconds) under `secret`. Lower-case hex only, as Zoom
    /// sends it; compared in constant time.
    package static func isValid(signature: String, timestamp: String, body: [UInt8], secret: String) -> Bool {
        let expected = Array(("v0=" + hexHMAC(key: secret, message: Array("v0:\(timestamp):".utf8) + body)).utf8)
        return constantTimeEqual(expected, Array(signature.utf8))
    }

    /// The answer to an `endpoint.url_validation` event: `encryptedToken` is the hex HMAC-SHA256 of
    /// `plainToken` under `secret`.
    package static func urlValidationAnswer(plainToken: String, secret: String) -> (
        plainToken: String, encryptedToken: String
    ) {
        (plainToken, hexHMAC(key: secret, message: Array(plainToken.utf8)))
    }

    /// Lower-case hex of HMAC-SHA256(key, message).
    package static func hexHMAC(key: String, message: [UInt8]) -> String {
        let mac = HMAC<SHA256>.authenticationCode(for: message, using: SymmetricKey(data: Array(key.utf8)))
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(64)
        for byte in mac {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0x0F)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Equal length and bytes, in time that depends only on the lengths.
    package static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        var difference = UInt8(a.count == b.count ? 0 : 1)
        let count = max(a.count, b.count)
        for i in 0..<count {
            let x = i < a.count ? a[i] : 0
            let y = i < b.count ? b[i] : 0
            difference |= x ^ y
        }
        return difference == 0
    }
}
