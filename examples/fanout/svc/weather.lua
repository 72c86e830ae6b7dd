return require "svc._service" ("weather", 0.05, { city = "Lisbon", celsius = 21 })
