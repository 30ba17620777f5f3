"""ListDocuments' page tokens: the last id of a page, signed with a key of this server process (HMAC-SHA256), so
that a token the server did not give out, however well-formed, is refused. Tokens do not outlive the process."""
import base64
import binascii
import hashlib
import hmac
import os

MAC_BYTES = 16


class PageTokens:
    def __init__(self, key: bytes | None = None):
        self.key = key or os.urandom(32)

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self.key, payload, hashlib.sha256).digest()[:MAC_BYTES]

    def make(self, after: str) -> str:
        payload = after.encode()
        return base64.urlsafe_b64encode(self._mac(payload) + payload).decode()

    def read(self, token: str) -> str | None:
        """The id after which the page starts, or None when the token is not one of ours."""
        try:
            raw = base64.b64decode(token, altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            return None
        mac, payload = raw[:MAC_BYTES], raw[MAC_BYTES:]
        if len(mac) < MAC_BYTES or not hmac.compare_digest(mac, self._mac(payload)):
            return None
        try:
            return payload.decode()
        except UnicodeDecodeError:
            return None
