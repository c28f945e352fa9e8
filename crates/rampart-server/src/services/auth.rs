//! etcdserverpb.Auth: AuthEnable, AuthDisable, AuthStatus, Authenticate, and the users' and
//! roles' calls (UserAdd, UserGet, UserList, UserDelete, UserChangePassword, UserGrantRole,
//! UserRevokeRole, RoleAdd, RoleGet, RoleList, RoleDelete, RoleGrantPermission,
//! RoleRevokePermission), as etcd 3.4's `v3rpc/auth.go` over `etcdserver/v3_server.go`.
//!
//! Changes are `Command::Auth` entries through Raft, proposed as the caller
//! (`Caller::wrap_admin`), so the applier checks the root role against the auth store as it is
//! then (etcd's `needAdminPermission`); passwords are hashed here first. Reads (UserGet,
//! UserList, RoleGet, RoleList, AuthStatus) are served from this member's auth store after a
//! read barrier, with etcd's checks: the lists need the root role, a user may get itself and
//! the roles it holds. Authenticate checks the password here and issues a token, good on every
//! member (`crate::auth`).

use std::sync::Arc;

use rampart_api::authpb;
use rampart_api::etcdserverpb as pb;
use rampart_api::etcdserverpb::auth_server::Auth;
use rampart_storage::{AuthCommand, AuthState, Command, CommandResult, Permission, PermissionKind};
use tonic::{Request, Response, Status};

use crate::auth::Caller;
use crate::error::ServerError;
use crate::node::Node;

pub struct AuthService {
    node: Arc<Node>,
}

impl AuthService {
    pub fn new(node: Arc<Node>) -> Self {
        AuthService { node }
    }

    /// Proposes `command` as `caller` once the caller may (the applier checks again) and
    /// answers the header of the entry that applied it.
    async fn change(
        &self,
        caller: &Caller,
        command: AuthCommand,
    ) -> Result<pb::ResponseHeader, ServerError> {
        caller.check(&self.node.mvcc().auth(), |auth, user| {
            auth.check_admin(user)
        })?;
        let response = self
            .node
            .write(caller.wrap_admin(Command::Auth(command))?)
            .await?;
        match response.result? {
            CommandResult::Auth { .. } => Ok(self.node.header(response.revision)),
            other => Err(ServerError::Internal(format!(
                "unexpected result from the state machine: {other:?}"
            ))),
        }
    }

    /// The auth store once this member has applied everything committed before the call (the
    /// reads etcd serves through Raft), and the header to answer with.
    async fn read(&self) -> Result<(Arc<AuthState>, pb::ResponseHeader), ServerError> {
        self.node.read_barrier().await?;
        Ok((self.node.mvcc().auth(), self.node.current_header()))
    }

    /// The bcrypt hash of a request's password: its `hashedPassword` (etcd 3.5's clients hash
    /// on their side) or the hash of `password`.
    async fn hashed(&self, password: String, hashed: String) -> Result<String, ServerError> {
        if !hashed.is_empty() {
            return Ok(hashed);
        }
        self.node.authenticator().hash(password).await
    }
}

/// A protobuf permission as the auth store's.
pub(crate) fn permission(perm: Option<authpb::Permission>) -> Result<Permission, ServerError> {
    let perm = perm.ok_or_else(|| ServerError::InvalidArgument("permission not given".into()))?;
    let kind = match authpb::permission::Type::try_from(perm.perm_type) {
        Ok(authpb::permission::Type::Read) => PermissionKind::Read,
        Ok(authpb::permission::Type::Write) => PermissionKind::Write,
        Ok(authpb::permission::Type::Readwrite) => PermissionKind::ReadWrite,
        Err(_) => {
            return Err(ServerError::InvalidArgument(format!(
                "unknown permission type {}",
                perm.perm_type
            )))
        }
    };
    Ok(Permission {
        kind,
        key: perm.key,
        range_end: perm.range_end,
    })
}

/// The auth store's permission as protobuf.
fn to_pb(permission: &Permission) -> authpb::Permission {
    let kind = match permission.kind {
        PermissionKind::Read => authpb::permission::Type::Read,
        PermissionKind::Write => authpb::permission::Type::Write,
        PermissionKind::ReadWrite => authpb::permission::Type::Readwrite,
    };
    authpb::Permission {
        perm_type: kind as i32,
        key: permission.key.clone(),
        range_end: permission.range_end.clone(),
    }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        request: Request<pb::AuthEnableRequest>,
    ) -> Result<Response<pb::AuthEnableResponse>, Status> {
        // The key of the tokens issued from now on, on every member.
        let token_key = rand::random::<[u8; 32]>().to_vec();
        let header = self
            .change(&Caller::of(&request), AuthCommand::Enable { token_key })
            .await?;
        Ok(Response::new(pb::AuthEnableResponse {
            header: Some(header),
        }))
    }

    async fn auth_disable(
        &self,
        request: Request<pb::AuthDisableRequest>,
    ) -> Result<Response<pb::AuthDisableResponse>, Status> {
        let header = self
            .change(&Caller::of(&request), AuthCommand::Disable)
            .await?;
        Ok(Response::new(pb::AuthDisableResponse {
            header: Some(header),
        }))
    }

    async fn auth_status(
        &self,
        _request: Request<pb::AuthStatusRequest>,
    ) -> Result<Response<pb::AuthStatusResponse>, Status> {
        let (auth, header) = self.read().await?;
        Ok(Response::new(pb::AuthStatusResponse {
            header: Some(header),
            enabled: auth.enabled(),
            auth_revision: auth.revision(),
        }))
    }

    async fn authenticate(
        &self,
        request: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        let request = request.into_inner();
        let (auth, header) = self.read().await?;
        if !auth.enabled() {
            return Err(ServerError::AuthNotEnabled.into());
        }
        let user = auth
            .users
            .get(&request.name)
            .ok_or(ServerError::AuthFailed)?;
        // A user without a password cannot authenticate with one.
        let hash = user.password.clone().ok_or(ServerError::NoPasswordUser)?;
        let authenticator = self.node.authenticator();
        if !authenticator.verify(request.password, hash.clone()).await {
            return Err(ServerError::AuthFailed.into());
        }
        let token = authenticator.issue(&auth, &request.name, &hash)?;
        Ok(Response::new(pb::AuthenticateResponse {
            header: Some(header),
            token,
        }))
    }

    async fn user_add(
        &self,
        request: Request<pb::AuthUserAddRequest>,
    ) -> Result<Response<pb::AuthUserAddResponse>, Status> {
        let caller = Caller::of(&request);
        let request = request.into_inner();
        if request.name.is_empty() {
            return Err(ServerError::UserEmpty.into());
        }
        // Refused before the (slow) hashing when the caller may not add users.
        caller.check(&self.node.mvcc().auth(), |auth, user| {
            auth.check_admin(user)
        })?;
        let no_password = request.options.is_some_and(|o| o.no_password);
        let password = if no_password {
            None
        } else {
            Some(
                self.hashed(request.password, request.hashed_password)
                    .await?,
            )
        };
        let header = self
            .change(
                &caller,
                AuthCommand::UserAdd {
                    name: request.name,
                    password,
                },
            )
            .await?;
        Ok(Response::new(pb::AuthUserAddResponse {
            header: Some(header),
        }))
    }

    async fn user_get(
        &self,
        request: Request<pb::AuthUserGetRequest>,
    ) -> Result<Response<pb::AuthUserGetResponse>, Status> {
        let caller = Caller::of(&request);
        let name = request.into_inner().name;
        let (auth, header) = self.read().await?;
        // etcd: the root role, or the user itself.
        caller.check(&auth, |auth, user| match auth.check_admin(user) {
            Err(_) if user == name => Ok(()),
            other => other,
        })?;
        let user = auth.users.get(&name).ok_or(ServerError::UserNotFound)?;
        Ok(Response::new(pb::AuthUserGetResponse {
            header: Some(header),
            roles: user.roles.clone(),
        }))
    }

    async fn user_list(
        &self,
        request: Request<pb::AuthUserListRequest>,
    ) -> Result<Response<pb::AuthUserListResponse>, Status> {
        let caller = Caller::of(&request);
        let (auth, header) = self.read().await?;
        caller.check(&auth, |auth, user| auth.check_admin(user))?;
        Ok(Response::new(pb::AuthUserListResponse {
            header: Some(header),
            users: auth.users.keys().cloned().collect(),
        }))
    }

    async fn user_delete(
        &self,
        request: Request<pb::AuthUserDeleteRequest>,
    ) -> Result<Response<pb::AuthUserDeleteResponse>, Status> {
        let caller = Caller::of(&request);
        let name = request.into_inner().name;
        let header = self
            .change(&caller, AuthCommand::UserDelete { name })
            .await?;
        Ok(Response::new(pb::AuthUserDeleteResponse {
            header: Some(header),
        }))
    }

    async fn user_change_password(
        &self,
        request: Request<pb::AuthUserChangePasswordRequest>,
    ) -> Result<Response<pb::AuthUserChangePasswordResponse>, Status> {
        let caller = Caller::of(&request);
        let request = request.into_inner();
        caller.check(&self.node.mvcc().auth(), |auth, user| {
            auth.check_admin(user)
        })?;
        let password = self
            .hashed(request.password, request.hashed_password)
            .await?;
        let header = self
            .change(
                &caller,
                AuthCommand::UserChangePassword {
                    name: request.name,
                    password,
                },
            )
            .await?;
        Ok(Response::new(pb::AuthUserChangePasswordResponse {
            header: Some(header),
        }))
    }

    async fn user_grant_role(
        &self,
        request: Request<pb::AuthUserGrantRoleRequest>,
    ) -> Result<Response<pb::AuthUserGrantRoleResponse>, Status> {
        let caller = Caller::of(&request);
        let request = request.into_inner();
        let command = AuthCommand::UserGrantRole {
            user: request.user,
            role: request.role,
        };
        let header = self.change(&caller, command).await?;
        Ok(Response::new(pb::AuthUserGrantRoleResponse {
            header: Some(header),
        }))
    }

    async fn user_revoke_role(
        &self,
        request: Request<pb::AuthUserRevokeRoleRequest>,
    ) -> Result<Response<pb::AuthUserRevokeRoleResponse>, Status> {
        let caller = Caller::of(&request);
        let request = request.into_inner();
        let command = AuthCommand::UserRevokeRole {
            user: request.name,
            role: request.role,
        };
        let header = self.change(&caller, command).await?;
        Ok(Response::new(pb::AuthUserRevokeRoleResponse {
            header: Some(header),
        }))
    }

    async fn role_add(
        &self,
        request: Request<pb::AuthRoleAddRequest>,
    ) -> Result<Response<pb::AuthRoleAddResponse>, Status> {
        let caller = Caller::of(&request);
        let name = request.into_inner().name;
        let header = self.change(&caller, AuthCommand::RoleAdd { name }).await?;
        Ok(Response::new(pb::AuthRoleAddResponse {
            header: Some(header),
        }))
    }

    async fn role_get(
        &self,
        request: Request<pb::AuthRoleGetRequest>,
    ) -> Result<Response<pb::AuthRoleGetResponse>, Status> {
        let caller = Caller::of(&request);
        let name = request.into_inner().role;
        let (auth, header) = self.read().await?;
        // etcd: the root role, or a user that holds the role.
        caller.check(&auth, |auth, user| match auth.check_admin(user) {
            Err(_) if auth.has_role(user, &name) => Ok(()),
            other => other,
        })?;
        let role = auth.roles.get(&name).ok_or(ServerError::RoleNotFound)?;
        Ok(Response::new(pb::AuthRoleGetResponse {
            header: Some(header),
            perm: role.permissions.iter().map(to_pb).collect(),
        }))
    }

    async fn role_list(
        &self,
        request: Request<pb::AuthRoleListRequest>,
    ) -> Result<Response<pb::AuthRoleListResponse>, Status> {
        let caller = Caller::of(&request);
        let (auth, header) = self.read().await?;
        caller.check(&auth, |auth, user| auth.check_admin(user))?;
        Ok(Response::new(pb::AuthRoleListResponse {
            header: Some(header),
            roles: auth.roles.keys().cloned().collect(),
        }))
    }

    async fn role_delete(
        &self,
        request: Request<pb::AuthRoleDeleteRequest>,
    ) -> Result<Response<pb::AuthRoleDeleteResponse>, Status> {
        let caller = Caller::of(&request);
        let name = request.into_inner().role;
        let header = self
            .change(&caller, AuthCommand::RoleDelete { name })
            .await?;
        Ok(Response::new(pb::AuthRoleDeleteResponse {
            header: Some(header),
        }))
    }

    async fn role_grant_permission(
        &self,
        request: Request<pb::AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<pb::AuthRoleGrantPermissionResponse>, Status> {
        let caller = Caller::of(&request);
        let request = request.into_inner();
        let command = AuthCommand::RoleGrantPermission {
            role: request.name,
            permission: permission(request.perm)?,
        };
        let header = self.change(&caller, command).await?;
        Ok(Response::new(pb::AuthRoleGrantPermissionResponse {
            header: Some(header),
        }))
    }

    async fn role_revoke_permission(
        &self,
        request: Request<pb::AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<pb::AuthRoleRevokePermissionResponse>, Status> {
        let caller = Caller::of(&request);
        let request = request.into_inner();
        let command = AuthCommand::RoleRevokePermission {
            role: request.role,
            key: request.key,
            range_end: request.range_end,
        };
        let header = self.change(&caller, command).await?;
        Ok(Response::new(pb::AuthRoleRevokePermissionResponse {
            header: Some(header),
        }))
    }
}
