// Ed25519 signatures of cache archives, through OpenSSL (keys are PEM files, so that
// `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout` make them too).
#pragma once

#include <filesystem>
#include <string>
#include <string_view>

namespace spattn::cache {

// A private key loaded from a PEM file. Throws kIo (unreadable) or kInvalidArgument (not
// an Ed25519 private key), naming the file.
class SigningKey {
 public:
  explicit SigningKey(const std::filesystem::path& pem);
  ~SigningKey();
  SigningKey(const SigningKey&) = delete;
  SigningKey& operator=(const SigningKey&) = delete;

  const std::string& public_key() const { return public_; }  // raw, 32 bytes
  std::string sign(std::string_view message) const;           // 64 bytes

 private:
  void* key_ = nullptr;  // EVP_PKEY
  std::string public_;
};

// The raw 32-byte key of a PEM public key file (or of a private key file's public half).
// Throws kIo / kInvalidArgument naming the file.
std::string load_public_key(const std::filesystem::path& pem);

// Whether `signature` (64 bytes) is `public_key`'s (32 bytes, raw) signature of `message`.
bool verify_signature(std::string_view public_key, std::string_view message, std::string_view signature);

// "SHA256:" and the first 16 hex digits of the SHA-256 of a raw public key.
std::string fingerprint(std::string_view public_key);

// Writes a new key pair: the private key (PEM, mode 0600) and its public key (PEM).
// Refuses to overwrite either file. Throws kIo.
void generate_key_pair(const std::filesystem::path& private_pem, const std::filesystem::path& public_pem);

}  // namespace spattn::cache
