-- Edit this file while the server runs (with --watch or --dev) and save:
-- the next request runs the new code. It is an app module (under APP,
-- loaded with require), so a reload reads it again.
return {
  name = "v1",
  greeting = "Hello",
}
