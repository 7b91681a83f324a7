// Helpers shared by the test programs.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>

namespace spattn::test {

// A fresh empty directory under $SPATTN_TEST_TMP (or the system temp dir), removed
// when the object dies.
class TempDir {
 public:
  explicit TempDir(const std::string& tag = "t");
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

// Sets an environment variable for the lifetime of the object, restoring the old value.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::optional<std::string>& value);
  ~ScopedEnv();

 private:
  std::string name_;
  std::optional<std::string> old_;
};

// Path of the spattn CLI binary ($SPATTN_CLI, else the one this build made).
std::string cli_path();

// Runs a shell command, capturing stdout and stderr; returns the exit status.
struct CommandResult {
  int status = -1;
  std::string out;
  std::string err;
};
CommandResult run_command(const std::string& command);

}  // namespace spattn::test
